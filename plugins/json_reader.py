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

from collections.abc import Iterator
from pathlib import Path

import attrs

from csm_adapt import hookimpl
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import Malformed, Sample
from csm_adapt_plugins._records import (
    RecordError,
    check_encoding,
    check_file,
    read_records,
    sample_or_malformed,
    turn_from_record,
)


@attrs.frozen
class JsonOptions:
    path: Path  # the metadata file: a JSON list, or JSONL
    encoding: str = attrs.field(default="utf-8", validator=check_encoding)
    absolute_paths: bool = False  # allow audio paths outside the metadata file's folder


class JsonReader:
    def __init__(self, options: JsonOptions):
        self.options = options
        check_file(options.path, "data.reader.path")

    def read(self) -> Iterator[Sample | Malformed]:
        path = self.options.path
        for line, record in read_records(path, self.options.encoding):
            where = f"{path}:{line}"
            yield sample_or_malformed(where, self._sample, record, where)

    def _sample(self, record: dict | RecordError, where: str) -> Sample:
        if isinstance(record, RecordError):
            raise record
        turn = turn_from_record(record, self.options.path.parent, where, absolute_paths=self.options.absolute_paths)
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
