"""Packing plans on sample lengths alone: samples -> row sequences -> batches within a row budget.

Plans are lists of indices, so the loader can plan (and skip ahead on resume) without building
tensors. Everything here is deterministic: ties break by input order.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from csm_adapt.data.batches import padded_length


def _positive(instance, attribute, value) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


@attrs.frozen(kw_only=True)
class Packer:
    max_rows: int = attrs.field(default=2048, validator=_positive)  # rows of one packed sequence
    rows_per_batch: int = attrs.field(default=8192, validator=_positive)  # B * S budget of one batch
    pad_multiple: int = attrs.field(default=64, validator=_positive)  # S is rounded up to this

    def pack(self, lengths: Sequence[int]) -> list[list[int]]:
        """First-fit decreasing: sample indices per sequence, each sequence <= max_rows rows."""
        bins: list[list[int]] = []
        free: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            if lengths[i] > self.max_rows:
                # prepare rejects these; the loader names the shard and key before packing
                raise ValueError(f"a sample of {lengths[i]} rows exceeds max_rows={self.max_rows}")
            slot = next((b for b, room in enumerate(free) if room >= lengths[i]), None)
            if slot is None:
                bins.append([])
                free.append(self.max_rows)
                slot = len(bins) - 1
            bins[slot].append(i)
            free[slot] -= lengths[i]
        return bins

    def group(self, seq_lengths: Sequence[int]) -> list[list[int]]:
        """Sequence indices per batch: longest first, so each batch's S is its first sequence's
        padded length and batch_size * S <= rows_per_batch (a batch holds at least one sequence)."""
        batches: list[list[int]] = []
        width = 0
        for i in sorted(range(len(seq_lengths)), key=lambda i: -seq_lengths[i]):
            if batches and (len(batches[-1]) + 1) * width <= self.rows_per_batch:
                batches[-1].append(i)
            else:
                batches.append([i])
                width = padded_length(seq_lengths[i], self.pad_multiple)
        return batches

    def plan(self, lengths: Sequence[int]) -> list[list[list[int]]]:
        """Sample lengths -> batches -> sequences -> sample indices."""
        sequences = self.pack(lengths)
        seq_lengths = [sum(lengths[i] for i in seq) for seq in sequences]
        return [[sequences[s] for s in batch] for batch in self.group(seq_lengths)]
