"""Reading metadata for the built-in readers: text in a declared encoding, JSON records, audio paths
kept inside the dataset, and one bad record turned into a `Malformed` rather than a stopped prepare.

A JSON metadata file is a JSON list of objects or JSONL (one object a line). Either way each record
comes with its line number, so errors and `Sample.source` can point at `file:line`.
"""

from __future__ import annotations

import codecs
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import Malformed, Sample, Turn

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\r\n"


def check_file(path: Path, key: str) -> None:
    """Fail early (e.g. in `csm-adapt validate`) when a metadata file is missing."""
    if not path.is_file():
        raise CsmAdaptError(f"{path}: no such file ({key})")


class RecordError(CsmAdaptError):
    """One metadata record is unusable; `reason` is the short code its reject is counted by."""

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


def check_encoding(instance, attribute, value) -> None:
    """attrs validator of a reader's `encoding` option."""
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, latin-1, cp1252)", attribute) from None


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The text of a metadata file; a UTF-8 byte-order mark is dropped. Undecodable bytes stop with
    the line and column, and what to do."""
    data = path.read_bytes()
    is_utf8 = codecs.lookup(encoding).name == "utf-8"
    try:
        return data.decode("utf-8-sig" if is_utf8 else encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        name = "UTF-8" if is_utf8 else encoding
        raise CsmAdaptError(
            f"{path}:{line}: not {name} (byte 0x{data[e.start]:02x} at column {column}); "
            'convert it or set the reader\'s encoding option (data.reader.encoding, e.g. "latin-1")'
        ) from None


@attrs.frozen(kw_only=True)
class RecordsOptions:
    """The options every reader of one JSON / JSONL metadata file takes (`json`, `conversation`)."""

    path: Path  # the metadata file: a JSON list, or JSONL
    encoding: str = attrs.field(default="utf-8", validator=check_encoding)
    absolute_paths: bool = False  # allow audio paths outside the metadata file's folder


class RecordsReader:
    """Reads `options.path` record by record; a subclass's `sample(record, where)` makes each Sample,
    and a record it cannot use (a CsmAdaptError) is a Malformed, the others still read."""

    def __init__(self, options: RecordsOptions):
        self.options = options
        check_file(options.path, "data.reader.path")

    def read(self) -> Iterator[Sample | Malformed]:
        path = self.options.path
        for line, record in read_records(path, self.options.encoding):
            where = f"{path}:{line}"
            yield sample_or_malformed(where, self._sample, record, where)

    def sample(self, record: dict, where: str) -> Sample:
        raise NotImplementedError

    def turn(self, record: dict, where: str) -> Turn:
        """A Turn from `{text, path, ...}`, its audio path relative to the metadata file's folder."""
        return turn_from_record(record, self.options.path.parent, where, absolute_paths=self.options.absolute_paths)

    def _sample(self, record: dict | RecordError, where: str) -> Sample:
        if isinstance(record, RecordError):
            raise record
        return self.sample(record, where)


def sample_or_malformed(where: str, build: Callable[..., Sample], *args) -> Sample | Malformed:
    """`build(*args)`, or the Malformed record it failed with."""
    try:
        return build(*args)
    except CsmAdaptError as e:
        return Malformed(source=where, detail=str(e), reason=getattr(e, "reason", "malformed"))


def read_records(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, dict | RecordError]]:
    """(line, object) of each record: a JSON list when the file starts with `[`, else JSONL. A JSONL
    line that is not a JSON object comes as a RecordError (the other lines are still usable); a
    broken JSON list stops, since nothing after the break can be placed."""
    text = read_text(path, encoding)
    records = _array_items(path, text) if text.lstrip(_WHITESPACE).startswith("[") else _lines(path, text)
    for line, record in records:
        if not isinstance(record, (dict, RecordError)):
            record = RecordError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        yield line, record


def _lines(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except json.JSONDecodeError as e:
            yield line, RecordError(f"{path}:{line}: invalid JSON ({e.msg}, column {e.colno})")


def _array_items(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """Items of a top-level JSON array with the line each starts on (json.load would lose lines)."""
    pos = _skip_whitespace(text, text.index("[") + 1)
    line, counted = 1, 0  # `line` is the line of text[counted]
    while not text.startswith("]", pos):
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            item, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise CsmAdaptError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        yield line, item
        pos = _skip_whitespace(text, pos)
        if text.startswith(",", pos):
            pos = _skip_whitespace(text, pos + 1)
        elif not text.startswith("]", pos):
            line += text.count("\n", counted, pos)
            raise CsmAdaptError(f"{path}:{line}: invalid JSON (expected ',' or ']' after an item)")
    if _skip_whitespace(text, pos + 1) != len(text):
        raise CsmAdaptError(f"{path}: invalid JSON (text after the closing ']')")


def _skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def turn_from_record(
    record: dict, base_dir: Path, where: str, target: bool = True, absolute_paths: bool = False
) -> Turn:
    """A Turn from `{text, path, start?, end?, speaker?}`; a relative path is relative to `base_dir`
    and must stay inside it; an absolute path needs `absolute_paths`.

    Absent or null optional fields stay None; anything else of the wrong type is an error naming
    `where` (file:line) and the key.
    """
    text = _field(record, "text", str, where, required=True)
    audio = _field(record, "path", str, where, required=True)
    return Turn(
        speaker=_field(record, "speaker", int, where),
        text=text,
        audio=inside_root(base_dir, audio, where, absolute_paths),
        start=_time(record, "start", where),
        end=_time(record, "end", where),
        target=target,
    )


def inside_root(root: Path, relative: str, where: str, absolute_paths: bool | None = False) -> Path:
    """`root / relative`, refused when it leaves `root` (`../../secret`) or is absolute, unless the
    metadata uses absolute paths on purpose (the reader's `absolute_paths` option; None: the reader
    has none). Checked on the path as written, not through symlinks: a dataset may link its audio
    folder elsewhere."""
    path = Path(root) / relative
    if absolute_paths:
        return path
    hint = (
        "" if absolute_paths is None else " (set the reader's absolute_paths = true if the metadata does so on purpose)"
    )
    if Path(relative).is_absolute():
        raise RecordError(f"{where}: absolute audio path {relative!r} refused{hint}", "path outside root")
    if not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
        raise RecordError(
            f"{where}: audio path {relative!r} leads outside the dataset folder {root}; refused{hint}",
            "path outside root",
        )
    return path


def _field(record: dict, key: str, kind: type, where: str, required: bool = False) -> Any:
    value = record.get(key)
    if value is None:
        if required:
            raise CsmAdaptError(f"{where}: missing required key {key!r}")
        return None
    # bool is an int subclass: `"speaker": true` is a mistake, not speaker 1.
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CsmAdaptError(f"{where}: key {key!r}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _time(record: dict, key: str, where: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    # Python's json accepts NaN and Infinity; a NaN time must not slip through as "no time".
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CsmAdaptError(f"{where}: key {key!r}: expected a finite number of seconds, got {value!r}")
    return float(value)
