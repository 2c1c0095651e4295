"""The `json` reader: a JSON list or JSONL of clips `{text, path, start?, end?, speaker?, id?}`.

    [data.reader]
    name = "json"
    path = "/data/myset/metadata.jsonl"

`path` in a record is relative to the metadata file's folder (or absolute). Missing or null
`start`/`end` mean the whole file, a missing `speaker` means none; `id` defaults to the audio path
(without its extension) plus the start time when there is one. Other keys are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import attrs

from csm_adapt import hookimpl
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import Sample
from csm_adapt_plugins._records import check_file, read_records, turn_from_record


@attrs.frozen
class JsonOptions:
    path: Path  # the metadata file: a JSON list, or JSONL


class JsonReader:
    def __init__(self, options: JsonOptions):
        self.options = options
        check_file(options.path, "data.reader.path")

    def read(self) -> Iterator[Sample]:
        path = self.options.path
        for line, record in read_records(path):
            where = f"{path}:{line}"
            turn = turn_from_record(record, path.parent, where)
            yield Sample(id=_sample_id(record, turn.start, where), turns=(turn,), source=where)


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
