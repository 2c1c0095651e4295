"""The search space against the recipe: checking it, drawing a trial's values, turning them into overrides.

A trial's values are applied as ordinary `key=value` overrides, so a swept key is exactly what the
same override on the command line would be, and checking the space is loading the recipe with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from csm_adapt.config import toml_io
from csm_adapt.config.recipe import load_recipe
from csm_adapt.config.sweep import Param, SweepConfig
from csm_adapt.errors import ConfigError

# Every trial reads the same prepared shards and writes its own run directory; the sweep owns these.
NOT_SWEPT = {
    "data": "the shards are prepared once and shared by all trials",
    "output": "each trial gets its own run directory",
    "sweep": "the sweep cannot tune itself",
    "train.steps": "set the budget per trial with sweep.steps",
}


def literal(value: Any) -> str:
    """`value` as the TOML literal an override takes (strings quoted, so paths stay strings)."""
    return toml_io.dumps({"v": value}).split("=", 1)[1].strip()


def as_overrides(values: dict[str, Any]) -> list[str]:
    return [f"{key}={literal(value)}" for key, value in values.items()]


def check_space(recipe_path: Path, overrides: Sequence[str], sweep: SweepConfig) -> None:
    """Reject keys the sweep must not touch, and values the recipe would reject, naming the key."""
    for key, param in sweep.params.items():
        where = f'sweep.params."{key}"'
        for prefix, why in NOT_SWEPT.items():
            if key == prefix or key.startswith(prefix + "."):
                raise ConfigError(f"{recipe_path}: {where}: {key} cannot be swept: {why}")
        # The ends of a range and every choice; values in between are of the same type and within them.
        for value in _extremes(param):
            try:
                load_recipe(recipe_path, [*overrides, f"{key}={literal(value)}"])
            except ConfigError as e:
                raise ConfigError(f"{where}: {value!r} is not a valid value: {e}") from None


def _extremes(param: Param) -> list[Any]:
    if param.type in ("float", "int"):
        return [param.low, param.high]
    return list(param.choices) if param.type == "categorical" else [param.value]


def suggest(trial: optuna.Trial, params: dict[str, Param]) -> dict[str, Any]:
    """The trial's value for each parameter, fixed ones included."""
    values = {}
    for key, p in params.items():
        if p.type == "float":
            values[key] = trial.suggest_float(key, p.low, p.high, log=bool(p.log), step=p.step)
        elif p.type == "int":
            values[key] = trial.suggest_int(key, p.low, p.high, log=bool(p.log), step=p.step or 1)
        elif p.type == "categorical":
            values[key] = trial.suggest_categorical(key, p.choices)
        else:
            values[key] = p.value
    return values


def with_fixed(params: dict[str, Param], suggested: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's values: what Optuna recorded (`trial.params`) plus the fixed parameters."""
    return {
        key: p.value if p.type == "fixed" else suggested[key]
        for key, p in params.items()
        if p.type == "fixed" or key in suggested
    }
