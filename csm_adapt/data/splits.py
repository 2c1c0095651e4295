"""Splitting a reader's samples into train and validation, deterministically.

The validation set is the `ceil(fraction * n)` clips (or speakers) whose hash with the seed is
lowest. Hashing makes the choice independent of reading order and stable when clips are added
(a new clip moves at most one other across the line); taking a count rather than a hash threshold
gives exactly the requested share, and at least one, even on a tiny dataset.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Literal

from csm_adapt.plugin_api import Sample


def split_samples(
    samples: Sequence[Sample], fraction: float, by: Literal["clip", "speaker"], seed: int
) -> tuple[list[Sample], list[Sample]]:
    """(train, val), each in reading order."""
    if fraction == 0:
        return list(samples), []
    key = _clip_key if by == "clip" else _speaker_key
    groups = sorted({key(s) for s in samples}, key=lambda group: _hash(seed, group))
    val_groups = set(groups[: math.ceil(fraction * len(groups))])
    train = [s for s in samples if key(s) not in val_groups]
    val = [s for s in samples if key(s) in val_groups]
    return train, val


def _clip_key(sample: Sample) -> str:
    return sample.id


def _speaker_key(sample: Sample) -> str:
    # A conversation goes with the set of its speakers; clips without a speaker form one group.
    return ",".join(sorted({str(turn.speaker) for turn in sample.turns}))


def _hash(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()
