"""Build attrs configs from plain dicts (parsed TOML/JSON), strictly, and turn them back into dicts.

This is the one way configs are built from dicts in the project. Every error names the full key
path (`train.lr: expected float, got str "abc"`); unknown keys are rejected with the valid ones.
Supported field types: attrs classes, str/int/float/bool (an int is accepted for a float), Path,
Url (a `scheme://...` string, kept as written: never made relative; `Url | Path` takes either),
Literal, `X | None` and other unions, list[X], tuple[X, ...], dict[str, X] and Any;
`unsupported_fields` lists the fields of a class that use anything else.
Relative paths are made absolute, so a saved config means the same thing wherever it is loaded
from: against `base_dir` (a recipe's folder) when given, else the current directory. A field marked
`metadata=OUTPUT` (a folder a run writes), and any key in `cwd_keys` (given on the command line), is
made absolute against the current directory instead; a `metadata=SOURCE` str (a local path or a hub
id) is taken relative to `base_dir` when that names an existing file or folder. Optional fields must
default to None: `to_dict` drops None values (TOML has no null).
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import attrs

from csm_adapt.errors import ConfigError

# Types built by a caller-supplied function `(value, key_path) -> object` instead of by the rules here.
FromDictHooks = Mapping[type, Callable[[Any, str], Any]]
# Types dumped by a caller-supplied function `(object) -> plain value`; matched with isinstance.
ToDictHooks = Mapping[type, Callable[[Any], Any]]


# Field metadata for how a relative path is resolved (see the module docstring).
PATH_KIND = "csm_adapt_path"
OUTPUT = {PATH_KIND: "output"}
SOURCE = {PATH_KIND: "source"}

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class Url(str):
    """A `scheme://...` location (`s3://bucket/prefix`, `hf://datasets/...`): kept as written, never
    resolved against a folder as a Path is."""


def is_url(value: object) -> bool:
    """True for a `scheme://...` string (a Url, or a str shaped like one); never for a Path."""
    return isinstance(value, str) and _URL.match(value) is not None


def from_dict(
    cls: type,
    data: Any,
    path: str = "",
    hooks: FromDictHooks | None = None,
    *,
    base_dir: Path | None = None,
    cwd_keys: Collection[str] = (),
) -> Any:
    """Build `cls` (usually an attrs class) from `data`; `path` prefixes key paths in errors."""
    return _Builder(hooks or {}, base_dir, frozenset(cwd_keys)).build(cls, data, path)


def to_dict(obj: Any, hooks: ToDictHooks | None = None) -> Any:
    """The plain-data form of `obj`, which `from_dict` turns back into an equal object."""
    hooks = hooks or {}
    for tp, dump in hooks.items():
        if isinstance(obj, tp):
            return dump(obj)
    if attrs.has(type(obj)):
        return {
            f.name: to_dict(value, hooks)
            for f in attrs.fields(type(obj))
            if (value := getattr(obj, f.name)) is not None
        }
    if isinstance(obj, (list, tuple)):
        return [to_dict(item, hooks) for item in obj]
    if isinstance(obj, dict):
        return {key: to_dict(value, hooks) for key, value in obj.items() if value is not None}
    if isinstance(obj, (Path, Url)):
        return str(obj)
    return obj


def unsupported_fields(cls: type, path: str = "") -> list[str]:
    """What `from_dict` could not build in attrs class `cls`: ["field `tags` has type set[str]", ...].

    Checked when a plugin registers its options class, so the mistake shows up then rather than
    the first time a recipe sets the key.
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception as e:  # an annotation naming something undefined
        return [f"the annotations of {cls.__name__} cannot be resolved ({type(e).__name__}: {e})"]
    return [problem for f in attrs.fields(cls) if f.init for problem in _problems(hints[f.name], join(path, f.name))]


def _problems(tp: Any, path: str) -> list[str]:
    if tp is Any or tp in (str, int, float, bool, Path, Url):
        return []
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return [problem for arg in args if arg is not type(None) for problem in _problems(arg, path)]
    if origin is Literal:
        return []
    if origin is list and len(args) == 1:
        return _problems(args[0], path)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _problems(args[0], path)
    if origin is dict and len(args) == 2 and args[0] is str:
        return _problems(args[1], path)
    if attrs.has(tp):
        return unsupported_fields(tp, path)
    shown = str(tp).replace("typing.", "") if args else getattr(tp, "__name__", str(tp))
    return [f"field `{path}` has type {shown}, which a recipe cannot give"]


def join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def describe(value: Any) -> str:
    """How a value reads in an error: `str "abc"`, `int 3`, `table`, `array`."""
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return f'str "{value}"'
    return f"{type(value).__name__} {value!r}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


@attrs.frozen
class _Builder:
    hooks: FromDictHooks
    base_dir: Path | None = None
    cwd_keys: frozenset[str] = frozenset()

    def _base(self, path: str) -> Path | None:
        """Where a relative path at key `path` starts from (None: the current directory)."""
        keys = path.split(".")
        if any(".".join(keys[:i]) in self.cwd_keys for i in range(1, len(keys) + 1)):
            return None
        return self.base_dir

    def build(self, tp: Any, value: Any, path: str) -> Any:
        if tp in self.hooks:
            return self.hooks[tp](value, path)
        if tp is Any:
            return value
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            return self._union(typing.get_args(tp), value, path)
        if origin is Literal:
            return self._literal(typing.get_args(tp), value, path)
        if origin in (list, tuple):
            return self._sequence(tp, origin, value, path)
        if origin is dict:
            return self._dict(tp, value, path)
        if attrs.has(tp):
            return self._attrs(tp, value, path)
        return self._scalar(tp, value, path)

    def _attrs(self, cls: type, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise ConfigError(f"{path or cls.__name__}: expected a table, got {describe(value)}")
        fields = [f for f in attrs.fields(cls) if f.init]
        names = [f.name for f in fields]
        for key in value:
            if key not in names:
                raise ConfigError(f"{join(path, key)}: unknown key; valid keys: {', '.join(names) or '(none)'}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in fields:
            if f.name in value:
                key = join(path, f.name)
                kind = f.metadata.get(PATH_KIND)
                builder = attrs.evolve(self, base_dir=None) if kind == "output" else self
                kwargs[f.name] = builder.build(hints[f.name], value[f.name], key)
                if kind == "source" and isinstance(kwargs[f.name], str):
                    kwargs[f.name] = self._source(kwargs[f.name], key)
            elif f.default is attrs.NOTHING:
                raise ConfigError(f"{join(path, f.name)}: missing required key")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            # attrs validators pass the failing Attribute as the second argument: name its key.
            if len(e.args) > 1 and isinstance(e.args[1], attrs.Attribute):
                raise ConfigError(f"{join(path, e.args[1].name)}: {e.args[0]}") from None
            raise ConfigError(f"{path or cls.__name__}: {e}") from None

    def _source(self, value: str, path: str) -> str:
        base = self._base(path)
        if base is None or Path(value).expanduser().is_absolute() or not (base / value).exists():
            return value
        return os.path.normpath(base / value)

    def _union(self, args: tuple, value: Any, path: str) -> Any:
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:
            return self.build(options[0], value, path)
        for option in options:
            try:
                return self.build(option, value, path)
            except ConfigError:
                continue
        expected = " or ".join(_type_name(option) for option in options)
        raise ConfigError(f"{path}: expected {expected}, got {describe(value)}")

    def _literal(self, choices: tuple, value: Any, path: str) -> Any:
        # Compare types too: True == 1 would otherwise let a bool through for an int choice.
        if any(value == choice and type(value) is type(choice) for choice in choices):
            return value
        listed = ", ".join(f'"{c}"' if isinstance(c, str) else repr(c) for c in choices)
        raise ConfigError(f"{path}: expected one of {listed}; got {describe(value)}")

    def _sequence(self, tp: Any, origin: type, value: Any, path: str) -> Any:
        args = typing.get_args(tp)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"from_dict supports tuple[X, ...] only, not {tp}")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected an array, got {describe(value)}")
        items = [self.build(args[0], item, join(path, i)) for i, item in enumerate(value)]
        return origin(items)

    def _dict(self, tp: Any, value: Any, path: str) -> dict:
        key_type, value_type = typing.get_args(tp)
        if key_type is not str:
            raise TypeError(f"from_dict supports dict[str, X] only, not {tp}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {describe(value)}")
        return {key: self.build(value_type, item, join(path, key)) for key, item in value.items()}

    def _scalar(self, tp: Any, value: Any, path: str) -> Any:
        if tp is Path:
            if isinstance(value, Path):
                return value
            if isinstance(value, str):
                base = self._base(path) or Path.cwd()
                return Path(os.path.normpath(base / Path(value).expanduser()))
        elif tp is Url:
            if is_url(value):
                return Url(value)
        elif tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif tp in (str, bool):
            if isinstance(value, tp):
                return value
        else:
            raise TypeError(f"from_dict cannot build {tp!r} (at {path})")
        expected = {Path: "str (a path)", Url: "str (a URL, scheme://...)"}.get(tp, tp.__name__)
        raise ConfigError(f"{path}: expected {expected}, got {describe(value)}")
