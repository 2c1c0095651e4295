"""Reading JSON metadata records for the `json` and `conversation` readers.

A metadata file is a JSON list of objects or JSONL (one object a line). Either way each record
comes with its line number, so errors and `Sample.source` can point at `file:line`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import Turn

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\r\n"


def check_file(path: Path, key: str) -> None:
    """Fail early (e.g. in `csm-adapt validate`) when a metadata file is missing."""
    if not path.is_file():
        raise CsmAdaptError(f"{path}: no such file ({key})")


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line, object) of each record: a JSON list when the file starts with `[`, else JSONL."""
    text = path.read_text(encoding="utf-8")
    records = _array_items(path, text) if text.lstrip(_WHITESPACE).startswith("[") else _lines(path, text)
    for line, record in records:
        if not isinstance(record, dict):
            raise CsmAdaptError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        yield line, record


def _lines(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except json.JSONDecodeError as e:
            raise CsmAdaptError(f"{path}:{line}: invalid JSON ({e.msg}, column {e.colno})") from None


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


def turn_from_record(record: dict, base_dir: Path, where: str, target: bool = True) -> Turn:
    """A Turn from `{text, path, start?, end?, speaker?}`; a relative path is relative to `base_dir`.

    Absent or null optional fields stay None; anything else of the wrong type is an error naming
    `where` (file:line) and the key.
    """
    text = _field(record, "text", str, where, required=True)
    audio = _field(record, "path", str, where, required=True)
    return Turn(
        speaker=_field(record, "speaker", int, where),
        text=text,
        audio=base_dir / audio,
        start=_time(record, "start", where),
        end=_time(record, "end", where),
        target=target,
    )


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
