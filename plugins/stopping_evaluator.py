"""The `stopping` evaluator: does the model stop when the sentence is said? Model-free and cheap.

- `eos`: 1 when generation ended with the EOS frame before `max_audio_ms`, else 0 (cut off); its
  mean is the share of utterances that stopped by themselves.
- `duration_ratio`: generated seconds / the seconds the text should take at the training set's
  speaking rate (`chars_per_second`, measured by `prepare`; or the `chars_per_second` option).
  Around 1 is right; well above 1 is babbling past the end, well below is cutting the text short.
  Characters are counted on the normalized text, as `prepare` counts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from csm_adapt import hookimpl
from csm_adapt.audio_io import SAMPLE_RATE
from csm_adapt.errors import ConfigError
from csm_adapt.model.text_tokenizer import normalize_text
from csm_adapt.plugin_api import EvalContext, Evaluator, Utterance


def _positive_or_none(instance, attribute, value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"must be > 0, got {value}", attribute)


@attrs.frozen(kw_only=True)
class StoppingOptions:
    # None: the training set's rate from the prepared data's index.json.
    chars_per_second: float | None = attrs.field(default=None, validator=_positive_or_none)


class StoppingEvaluator(Evaluator):
    metrics = ("eos", "duration_ratio")

    def __init__(self, options: StoppingOptions, context: EvalContext):
        super().__init__(options, context)
        self.chars_per_second = options.chars_per_second or context.chars_per_second
        if self.chars_per_second is None:
            raise ConfigError(
                "evaluator stopping: the speaking rate is unknown (no prepared data to read it from); "
                "set its chars_per_second option"
            )

    def evaluate(self, batch: Sequence[Utterance]) -> list[dict[str, float | str]]:
        out = []
        for u in batch:
            expected = len(normalize_text(u.text)) / self.chars_per_second
            seconds = u.audio.numel() / SAMPLE_RATE
            out.append({"eos": float(u.stopped), "duration_ratio": seconds / expected})
        return out


@hookimpl
def register_evaluators(register):
    register("stopping", StoppingEvaluator, options=StoppingOptions)
