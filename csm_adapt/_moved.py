"""Import paths documented before the subpackage layout (0.1), kept working as aliases.

`import csm_adapt.checkpoint` gives the very module `csm_adapt.model.checkpoint` (not a copy), so
classes and functions are the same objects whichever path imported them. New code and the docs use
the new paths; this table is the only place the old ones live.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "csm_adapt.audio_codec": "csm_adapt.model.audio_codec",
    "csm_adapt.checkpoint": "csm_adapt.model.checkpoint",
    "csm_adapt.generation": "csm_adapt.model.generation",
    "csm_adapt.synthesizer": "csm_adapt.model.synthesizer",
    "csm_adapt.text_tokenizer": "csm_adapt.model.text_tokenizer",
    "csm_adapt.train": "csm_adapt.training.loop",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        # Already executed under its own name; re-running it would make a second copy of every class.
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(MOVED[fullname]))


def install() -> None:
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
