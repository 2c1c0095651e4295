"""The tree is the architecture: which part of csm_adapt may import which (the rules each
subpackage's docstring states), and no engine module naming a built-in plugin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "csm_adapt"
# Foundation modules: anything may import them, and they import (almost) nothing of csm_adapt.
FOUNDATION = {"errors", "audio_io", "plugin_api", "files", "terminal"}

# What each part may import from csm_adapt, besides itself. A part missing here fails the test:
# a new subpackage states its rules first.
ALLOWED = {
    "errors": set(),
    "audio_io": {"errors", "plugin_api"},  # plugin_api.AudioSource: audio held by a dataset
    "plugin_api": {"errors"},
    "files": {"errors"},
    "terminal": set(),
    # What a finished run holds, for the commands' closing lines; a checkpoint's folder for the hub.
    "run_report": {"errors", "model"},
    "hub_push": {"errors", "model", "config"},
    "model": {"errors", "audio_io", "files"},
    # config.structure (strict attrs building, itself importing only errors) checks option classes.
    "plugin_engine": {"errors", "plugin_api", "config.structure"},
    "config": {"errors", "plugin_api", "plugin_engine", "model.config", "model.sources"},
    "data": FOUNDATION | {"model", "config"},
    "training": FOUNDATION | {"model", "data", "config", "plugin_engine", "evaluation"},
    # Generated speech scored by evaluator plugins: during training and by `csm-adapt evaluate`.
    "evaluation": FOUNDATION | {"model", "data", "config"},
    "sweep": FOUNDATION | {"config", "data", "training"},
    # Peak memory of a recipe's training: planned from the model and measured with the real step.
    "memory": FOUNDATION | {"model", "data", "config", "training"},
    # Long recordings -> clips for a reader: audio work only, no model, data or training.
    "segment": FOUNDATION,
    # The top: the command line may use everything.
    "commands": {"*"},
    "cli": {"*"},
    "__main__": {"*"},
    "__init__": {"*"},
    "_moved": set(),
    "assets": set(),  # the offline tokenizer's regeneration script
}


def _modules() -> list[Path]:
    # `recipes` is the shipped recipe folder (data), not code.
    return sorted(p for p in PACKAGE.rglob("*.py") if "recipes" not in p.relative_to(PACKAGE).parts)


def _part(dotted: str) -> str:
    """'csm_adapt.model.csm' -> 'model'; 'csm_adapt.errors' -> 'errors'."""
    return dotted.split(".")[1] if dotted.count(".") else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import in the module, at any depth (function-level imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: relative import (the package uses absolute ones)"
            # `from csm_adapt.training import parallel` imports csm_adapt.training.parallel.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _allowed(importer: str, imported: str) -> bool:
    rules = ALLOWED[importer]
    rest = imported.removeprefix("csm_adapt.")
    return "*" in rules or _part(imported) == importer or any(rest == r or rest.startswith(r + ".") for r in rules)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_what_its_part_may(path):
    rel = path.relative_to(PACKAGE)
    importer = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    assert importer in ALLOWED, f"csm_adapt/{rel}: part {importer!r} has no import rules in this test; add them"
    for line, name in _imports(path):
        assert not name.startswith("csm_adapt_plugins"), f"csm_adapt/{rel}:{line}: imports built-in plugin {name}"
        if name.startswith("csm_adapt.") and name.count(".") >= 1:
            target = name if _part(name) in ALLOWED else name.rsplit(".", 1)[0]
            assert _allowed(importer, target), f"csm_adapt/{rel}:{line}: {importer} may not import {target}"


def test_the_rules_catch_a_forbidden_import(tmp_path):
    # The checker itself: a model module importing training must be flagged.
    assert not _allowed("model", "csm_adapt.training.loop")
    assert not _allowed("model", "csm_adapt.data")
    assert not _allowed("data", "csm_adapt.training.step")
    assert _allowed("data", "csm_adapt.model.rows")
    assert not _allowed("config", "csm_adapt.model.csm")
    assert _allowed("config", "csm_adapt.model.config")
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from csm_adapt.training.loop import train\n")
    assert _imports(bad) == [(2, "csm_adapt.training.loop.train")]
