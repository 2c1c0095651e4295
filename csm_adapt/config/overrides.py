"""`key=value` overrides from the command line, applied to a recipe's raw dict before validation.

Keys are dotted paths (`data.reader.root`); a number indexes an array (`loggers.0.name`). Values are
TOML literals (`3e-5`, `true`, `"text"`, `["a", "b"]`, `{name = "jsonl"}`); anything that is not a
valid literal is taken as a bare string, so `data.reader.root=/data/siwis` works unquoted.
Validation happens afterwards on the whole recipe, so a bad override gets the same key-path error
as the same mistake written in the file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from csm_adapt.config import toml_io
from csm_adapt.errors import ConfigError


def parse_value(text: str) -> Any:
    try:
        return toml_io.loads(f"value = {text}")["value"]
    except toml_io.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """A copy of `raw` with each `key=value` applied in order; missing tables are created."""
    raw = copy.deepcopy(raw)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f'override "{override}": expected key=value')
        _set(raw, key.strip().split("."), parse_value(text.strip()), override)
    return raw


def _set(node: Any, keys: list[str], value: Any, override: str) -> None:
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f'override "{override}": {where}: no item {key} in an array of {len(node)}')
            key = int(key)
        elif not isinstance(node, dict):
            raise ConfigError(f'override "{override}": {".".join(keys[:depth])} is not a table')
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]
