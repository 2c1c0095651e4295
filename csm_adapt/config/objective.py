"""Which metric decides "better": `train.best_by` and the sweep's `objective`.

A choice is `"val/<loss>"` (validation losses; lower is better, `:min` may be written out) or
`"eval/<metric>:min|max"` (an evaluator's metric; its direction must be given, since for some
metrics higher is better and for others lower). Pure: no torch, so recipes check it cheaply.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

import attrs

VAL_METRICS = ("val/loss", "val/loss_c0", "val/loss_decoder")


@attrs.frozen
class Objective:
    name: str  # as logged: "val/loss", "eval/cer"
    direction: Literal["min", "max"]

    @classmethod
    def parse(cls, spec: str) -> Objective:
        """Raises ValueError with a message saying what is accepted."""
        name, _, direction = spec.partition(":")
        if name in VAL_METRICS:
            if direction not in ("", "min"):
                raise ValueError(f'"{spec}": validation losses are minimised (write "{name}" or "{name}:min")')
            return cls(name, "min")
        if name.startswith("eval/") and len(name) > len("eval/"):
            if direction not in ("min", "max"):
                raise ValueError(f'"{spec}": an eval metric needs its direction, e.g. "{name}:min" or "{name}:max"')
            return cls(name, direction)
        raise ValueError(f'"{spec}" is neither one of {", ".join(VAL_METRICS)} nor "eval/<metric>:min|max"')

    @property
    def is_eval(self) -> bool:
        return self.name.startswith("eval/")

    @property
    def metric(self) -> str:
        """The evaluator's own name of the metric ("cer" for "eval/cer")."""
        return self.name.split("/", 1)[1]

    def better(self, value: float, than: float | None) -> bool:
        """Whether `value` beats `than` (None: nothing yet). NaN never wins."""
        if value != value:
            return False
        if than is None:
            return True
        return value < than if self.direction == "min" else value > than

    def missing_from(self, eval_metrics: Collection[str] | None) -> str | None:
        """Why this objective can never be measured with the recipe's evaluators (None when it can).

        `eval_metrics`: the metrics the recipe's evaluators declare, None when it has no [eval] table.
        """
        if not self.is_eval:
            return None
        if eval_metrics is None:
            return f"{self.name} needs an [eval] table"
        if self.metric not in eval_metrics:
            produced = ", ".join(sorted(eval_metrics)) or "nothing"
            return f"no evaluator of eval.evaluators produces {self.metric!r} (they produce: {produced})"
        return None


def objective_validator(instance, attribute, value) -> None:
    """attrs validator for a field holding an objective spec."""
    try:
        Objective.parse(value)
    except ValueError as e:
        raise ValueError(str(e), attribute) from None
