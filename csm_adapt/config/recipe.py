"""Loading a recipe (TOML + overrides + plugins) into a validated `Recipe`, and saving it back.

The saved recipe is the resolved one (overrides applied, defaults filled in, paths absolute), so
`load_recipe(save_recipe(recipe))` gives an equal recipe: a run can be reproduced from it alone.

Relative paths: what a recipe reads (data, plugin files, local checkpoints and tokenizers, prompt
audio) is found relative to the recipe file's folder, so a recipe folder can be moved and run from
anywhere; what a run writes (`data.out`, `output.run_dir`, `sweep.dir`) goes relative to the
directory it runs from; a path given as a `key=value` override is relative to that directory too.
A URL (`data.out = "s3://bucket/prefix"`) is never relative to anything: it is kept as written.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import click
from rich.console import Console
from rich.syntax import Syntax

from csm_adapt.config import toml_io
from csm_adapt.config.overrides import apply_overrides
from csm_adapt.config.schema import AdapterRef, EvaluatorRef, LoggerRef, LossRef, PluginRef, ReaderRef, Recipe
from csm_adapt.config.structure import describe, from_dict, join, to_dict
from csm_adapt.errors import ConfigError, CsmAdaptError
from csm_adapt.plugin_engine.manager import load_plugins, resolve_local
from csm_adapt.plugin_engine.registries import Registries, Registry, collect

SAVED_NAME = "recipe.toml"


def load_raw(path: Path, overrides: Sequence[str] = ()) -> dict:
    """The recipe's dict with overrides applied and local plugin files made absolute."""
    path = Path(path)
    raw = apply_overrides(toml_io.read_toml(path), overrides)
    try:
        specs = from_dict(tuple[str, ...], raw.get("plugins", []), "plugins")
    except CsmAdaptError as e:
        raise type(e)(f"{path}: {e}") from None
    base = Path.cwd() if "plugins" in override_keys(overrides) else path.parent.absolute()
    raw["plugins"] = [resolve_local(spec, base) for spec in specs]
    return raw


def override_keys(overrides: Sequence[str]) -> set[str]:
    """The top key of each `key=value` (`data.reader.root`, `plugins` for `plugins.0`)."""
    keys = {override.partition("=")[0].strip() for override in overrides}
    return keys | {key.split(".")[0] for key in keys if key.split(".")[0] == "plugins"}


def load_recipe(path: Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe, loading the plugins it needs; errors name file and key."""
    raw = load_raw(path, overrides)
    paths = {"base_dir": Path(path).parent.absolute(), "cwd_keys": override_keys(overrides)}
    try:
        # Commands do not matter to a recipe: they go on a throwaway group.
        registries = collect(load_plugins(raw["plugins"]), click.Group())
        return from_dict(Recipe, raw, hooks=_plugin_ref_builders(registries, paths), **paths)
    except CsmAdaptError as e:
        raise type(e)(f"{path}: {e}") from None


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_dict(recipe, hooks={PluginRef: lambda ref: {ref.NAME_KEY: ref.name, **to_dict(ref.options)}})


def recipe_to_toml(recipe: Recipe) -> str:
    return toml_io.dumps(recipe_to_dict(recipe))


def changed_settings(recipe: Recipe) -> dict[str, Any]:
    """The settings a run was tuned by, as dotted keys: those of [model], [data], [loss], [train]
    and [samples] that differ from their defaults, and the loss strategy. Paths, readers, prompts
    and loggers are left out. This is what `log_hparams` gets, so TensorBoard's HParams view compares
    runs by `train.lr`, not by their data folders."""
    flat: dict[str, Any] = {"loss.strategy": recipe.loss.name}
    for prefix, table in (
        ("model", recipe.model),
        ("data", recipe.data),
        ("loss", recipe.loss.options),
        ("train", recipe.train),
        ("samples", recipe.samples),
    ):
        for f in attrs.fields(type(table)):
            value = getattr(table, f.name)
            default = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default
            if isinstance(value, (bool, int, float, str)) and value != default:
                flat[f"{prefix}.{f.name}"] = value
    return flat


def save_recipe(recipe: Recipe) -> Path:
    """Write the resolved recipe to `<run_dir>/recipe.toml`."""
    path = recipe.output.run_dir / SAVED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe_to_toml(recipe))
    return path


def print_recipe(recipe: Recipe, console: Console) -> None:
    text = recipe_to_toml(recipe)
    # highlight() gives coloured text without Syntax's full-width padding (clean when piped).
    console.print(Syntax(text, "toml").highlight(text))


def _plugin_ref_builders(registries: Registries, paths: dict) -> dict:
    return {
        ReaderRef: partial(build_plugin_ref, ReaderRef, registries.readers, paths=paths),
        LossRef: partial(build_plugin_ref, LossRef, registries.losses, paths=paths),
        LoggerRef: partial(build_plugin_ref, LoggerRef, registries.loggers, paths=paths),
        AdapterRef: partial(build_plugin_ref, AdapterRef, registries.adapters, paths=paths),
        EvaluatorRef: partial(build_plugin_ref, EvaluatorRef, registries.evaluators, paths=paths),
    }


def build_plugin_ref(
    ref_cls: type[PluginRef], registry: Registry, value: Any, path: str, *, paths: dict | None = None
) -> PluginRef:
    """A plugin table: the plugin's name under NAME_KEY, the rest checked by the plugin's options class."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a table, got {describe(value)}")
    options = dict(value)
    name_path = join(path, ref_cls.NAME_KEY)
    if ref_cls.NAME_KEY not in options:
        raise ConfigError(f"{name_path}: missing required key")
    name = options.pop(ref_cls.NAME_KEY)
    if not isinstance(name, str):
        raise ConfigError(f"{name_path}: expected str, got {describe(name)}")
    entry = registry.get(name, name_path)
    return ref_cls(name, from_dict(entry.options, options, path, **(paths or {})), entry.implementation)
