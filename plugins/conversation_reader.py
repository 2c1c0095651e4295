"""The `conversation` reader: JSONL (or a JSON list), one dialogue per record.

    {"id": "dlg1", "turns": [{"speaker": 0, "text": "Salut !", "path": "a.wav"},
                             {"speaker": 1, "text": "Bonjour.", "path": "b.wav", "start": 1.5, "end": 3.0,
                              "target": false}]}

    [data.reader]
    name = "conversation"
    path = "/data/dialogues.jsonl"
    targets = "flagged"          # or "all", "last", "speakers"
    target_speakers = [1]        # with targets = "speakers"

Turns are trained in order as interleaved text and audio. Which turns are targets (in the loss;
the others are context the model hears): "flagged" (default) uses each turn's `target` (true when
absent), "all" every turn, "last" only the last turn, "speakers" the turns of `target_speakers`.
Turn paths are relative to the metadata file's folder and must stay inside it (`absolute_paths =
true` allows any). The file is UTF-8 (a byte-order mark is dropped) unless `encoding` names
another. A dialogue that cannot be used is rejected (rejects.jsonl) and the others are kept.
Prepare splits a dialogue longer than `data.max_rows` at turn boundaries.
"""

from __future__ import annotations

from typing import Literal

import attrs

from csm_adapt import hookimpl
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import Sample, Turn
from csm_adapt_plugins._records import RecordsOptions, RecordsReader


def _speakers_match_mode(instance, attribute, value) -> None:
    if (instance.targets == "speakers") != bool(value):
        raise ValueError('give target_speakers exactly when targets = "speakers"', attribute)


@attrs.frozen(kw_only=True)
class ConversationOptions(RecordsOptions):
    targets: Literal["flagged", "all", "last", "speakers"] = "flagged"
    target_speakers: tuple[int, ...] = attrs.field(default=(), validator=_speakers_match_mode)


class ConversationReader(RecordsReader):
    options: ConversationOptions

    def sample(self, record: dict, where: str) -> Sample:
        dialogue_id, turns = record.get("id"), record.get("turns")
        if not isinstance(dialogue_id, str) or not dialogue_id:
            raise CsmAdaptError(f"{where}: key 'id': expected a non-empty str, got {dialogue_id!r}")
        if not isinstance(turns, list) or not turns:
            raise CsmAdaptError(f"{where}: key 'turns': expected a non-empty list of turns")
        parsed = []
        for i, raw in enumerate(turns):
            turn_where = f"{where}: turns[{i}]"
            if not isinstance(raw, dict):
                raise CsmAdaptError(f"{turn_where}: expected an object, got {type(raw).__name__}")
            turn = self.turn(raw, turn_where)
            is_last = i == len(turns) - 1
            parsed.append(attrs.evolve(turn, target=self._is_target(turn, raw, is_last, turn_where)))
        return Sample(id=dialogue_id, turns=tuple(parsed), source=where)

    def _is_target(self, turn: Turn, raw: dict, is_last: bool, where: str) -> bool:
        mode = self.options.targets
        if mode == "all":
            return True
        if mode == "last":
            return is_last
        if mode == "speakers":
            return turn.speaker in self.options.target_speakers
        flag = raw.get("target", True)
        if not isinstance(flag, bool):
            raise CsmAdaptError(f"{where}: key 'target': expected true or false, got {flag!r}")
        return flag


@hookimpl
def register_dataset_readers(register):
    register("conversation", ConversationReader, options=ConversationOptions)
