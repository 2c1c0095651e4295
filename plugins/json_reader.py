"""The `json` reader: a JSON list or JSONL of clips `{text, path, start?, end?, speaker?, id?}`.

    [data.reader]
    name = "json"
    path = "/data/myset/metadata.jsonl"

`path` in a record is relative to the metadata file's folder and must stay inside it; absolute
paths (or paths leading outside) need `absolute_paths = true`. Missing or null `start`/`end` mean
the whole file, a missing `speaker` means none; `id` defaults to the audio path (without its
extension) plus the start time when there is one. Other keys are ignored. The file is UTF-8 (a
byte-order mark is dropped) unless `encoding` names another. A record that cannot be used is
rejected (rejects.jsonl) and the others are kept.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from csm_adapt import hookimpl
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import Sample
from csm_adapt_plugins._records import RecordsOptions, RecordsReader


@attrs.frozen(kw_only=True)
class JsonOptions(RecordsOptions):
    pass


class JsonReader(RecordsReader):
    def sample(self, record: dict, where: str) -> Sample:
        turn = self.turn(record, where)
        return Sample(id=_sample_id(record, turn.start, where), turns=(turn,), source=where)


def _sample_id(record: dict, start: float | None, where: str) -> str:
    if "id" in record:
        if not isinstance(record["id"], str) or not record["id"]:
            raise CsmAdaptError(f"{where}: key 'id': expected a non-empty str, got {record['id']!r}")
        return record["id"]
    # Several clips may cut spans out of one file: the start keeps their ids apart.
    stem = Path(record["path"]).with_suffix("").as_posix()
    return stem if start is None else f"{stem}@{start:g}"


@hookimpl
def register_dataset_readers(register):
    register("json", JsonReader, options=JsonOptions)
