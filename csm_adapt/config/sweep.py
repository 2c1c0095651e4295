"""The recipe's `[sweep]` table: the search space, the budget per trial, the objective, pruner and sampler.

    [sweep]
    trials = 50
    steps = 500                       # train.steps of each trial (the recipe's own for the best run)
    [sweep.params]
    "train.lr" = { type = "float", low = 1e-5, high = 1e-3, log = true }
    "train.warmup_steps" = { type = "int", low = 0, high = 200, step = 50 }
    "loss.decoder_loss_weight" = { type = "categorical", choices = [0.3, 0.5, 0.7] }
    "train.weight_decay" = { type = "fixed", value = 0.0 }
    [sweep.pruner]
    name = "median"                   # or "hyperband", "none"
    [sweep.sampler]
    name = "tpe"                      # or "random"

Each parameter is keyed by the recipe key path it overrides. Whether its values suit that key is
checked against the recipe itself (space.check_space); here only the shape of each entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs

from csm_adapt.config.objective import objective_validator
from csm_adapt.config.structure import OUTPUT

# Optuna stores categorical choices as these types only.
CHOICE_TYPES = (bool, int, float, str)


def _fail(message: str, name: str) -> None:
    # The attribute as second argument lets from_dict name the offending key.
    raise ValueError(message, attrs.fields_dict(Param)[name])


@attrs.frozen(kw_only=True)
class Param:
    """One search dimension. `type` decides which of the other keys apply."""

    type: Literal["float", "int", "categorical", "fixed"]
    low: int | float | None = None  # float, int
    high: int | float | None = None  # float, int
    log: bool | None = None  # float, int: sample uniformly in log space
    step: int | float | None = None  # float, int: a grid of low + k * step
    choices: tuple[Any, ...] | None = None  # categorical
    value: Any = None  # fixed

    def __attrs_post_init__(self) -> None:
        allowed = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
                   "categorical": {"choices"}, "fixed": {"value"}}[self.type]  # fmt: skip
        for name in ("low", "high", "log", "step", "choices", "value"):
            if getattr(self, name) is not None and name not in allowed:
                _fail(f'does not apply to type "{self.type}" (it takes: {", ".join(sorted(allowed))})', name)
        if self.type in ("float", "int"):
            self._check_range()
        elif self.type == "categorical":
            if not self.choices:
                _fail("needs at least one choice", "choices")
            for choice in self.choices:
                if not isinstance(choice, CHOICE_TYPES):
                    _fail(f"choices must be strings, numbers or booleans, got {choice!r}", "choices")
        elif self.value is None:
            _fail('missing required key for type "fixed"', "value")

    def _check_range(self) -> None:
        number = int if self.type == "int" else (int, float)
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if value is None and name != "step":
                _fail(f'missing required key for type "{self.type}"', name)
            if value is not None and (not isinstance(value, number) or isinstance(value, bool)):
                _fail(f"must be {'an integer' if self.type == 'int' else 'a number'}, got {value!r}", name)
        if self.low >= self.high:
            _fail(f"must be greater than low ({self.low}), got {self.high}", "high")
        if self.log and self.low <= 0:
            _fail(f"must be > 0 with log = true, got {self.low}", "low")
        if self.step is not None and self.step <= 0:
            _fail(f"must be > 0, got {self.step}", "step")
        if self.step is not None and self.log:
            _fail("cannot be combined with log = true", "step")


@attrs.frozen(kw_only=True)
class PrunerConfig:
    """Stops trials whose validation loss lags. Options left out take Optuna's defaults."""

    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int | None = None  # median: trials that finish before any pruning
    n_warmup_steps: int | None = None  # median: steps of each trial that are never pruned
    min_resource: int | None = None  # hyperband: steps of the shortest bracket
    reduction_factor: int | None = None  # hyperband: 1/factor of trials promoted per rung

    def __attrs_post_init__(self) -> None:
        allowed = {
            "median": ("n_startup_trials", "n_warmup_steps"),
            "hyperband": ("min_resource", "reduction_factor"),
            "none": (),
        }
        for field in attrs.fields(PrunerConfig)[1:]:
            value = getattr(self, field.name)
            if value is not None and field.name not in allowed[self.name]:
                raise ValueError(f'does not apply to pruner "{self.name}"', field)
            if value is not None and value < (2 if field.name == "reduction_factor" else 0):
                raise ValueError(f"must be >= {2 if field.name == 'reduction_factor' else 0}, got {value}", field)

    def options(self) -> dict[str, int]:
        return {f.name: v for f in attrs.fields(PrunerConfig)[1:] if (v := getattr(self, f.name)) is not None}


@attrs.frozen(kw_only=True)
class SamplerConfig:
    name: Literal["tpe", "random"] = "tpe"
    seed: int = 0  # each worker samples with a seed derived from it (runner.py)
    # TPE: model the parameters jointly (they interact: lr with warmup, weight decay).
    multivariate: bool | None = None

    def __attrs_post_init__(self) -> None:
        if self.name == "random" and self.multivariate is not None:
            raise ValueError('applies to sampler "tpe" only', attrs.fields(SamplerConfig).multivariate)


def _positive(instance, attribute, value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"must be > 0, got {value}", attribute)


@attrs.frozen(kw_only=True)
class SweepConfig:
    params: dict[str, Param]
    trials: int = attrs.field(default=20, validator=_positive)  # `--trials` overrides it
    steps: int | None = attrs.field(default=None, validator=_positive)  # None: the recipe's train.steps
    # "val/loss" is scored on every validation frame with a fixed weighting (train.VAL_DECODER_WEIGHT),
    # so tuning the loss strategy's weights cannot make a trial look better; minimised. Or an eval
    # metric with its direction, "eval/cer:min" (the recipe's [eval] table must produce it).
    objective: str = attrs.field(default="val/loss", validator=objective_validator)
    study_name: str | None = None  # None: the name of output.run_dir
    dir: Path | None = attrs.field(default=None, metadata=OUTPUT)  # None: `<output.run_dir>-sweep`
    pruner: PrunerConfig = attrs.field(factory=PrunerConfig)
    sampler: SamplerConfig = attrs.field(factory=SamplerConfig)

    def __attrs_post_init__(self) -> None:
        if not self.params:
            raise ValueError("needs at least one parameter", attrs.fields(SweepConfig).params)
