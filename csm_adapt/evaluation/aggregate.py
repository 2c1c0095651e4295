"""Per-utterance metrics -> one figure per metric: the mean and a bootstrap 95 % interval.

The interval is the percentile bootstrap over utterances (resampled with replacement), seeded, so
the same metrics always give the same interval. With one utterance the interval is the value itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import numpy as np

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


@attrs.frozen
class Summary:
    mean: float
    low: float  # bounds of the 95 % bootstrap interval of the mean
    high: float
    count: int  # utterances the metric applied to

    def to_json(self) -> dict:
        return attrs.asdict(self)


def bootstrap_interval(
    values: Sequence[float], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values`."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarize(per_utterance: Sequence[Mapping[str, float | str]], *, seed: int = 0) -> dict[str, Summary]:
    """Each float metric found in `per_utterance` summarised over the utterances that have it."""
    names = sorted({k for row in per_utterance for k, v in row.items() if not isinstance(v, str)})
    out = {}
    for name in names:
        values = [float(row[name]) for row in per_utterance if name in row]
        low, high = bootstrap_interval(values, seed=seed)
        out[name] = Summary(float(np.mean(values)), low, high, len(values))
    return out
