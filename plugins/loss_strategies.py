"""The `full` and `amortized` loss strategies.

loss = (1 - w) * CE(codebook 0) + w * CE(codebooks 1..31). `amortized` trains the depth decoder on
a random fraction of the target frames, re-drawn every step (CSM's compute amortization); `full`
on all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from csm_adapt import hookimpl
from csm_adapt.plugin_api import LossParts

if TYPE_CHECKING:
    # Imported where used instead: every csm-adapt command (`plugins`, `validate`) imports the
    # plugins, and torch takes seconds to import.
    import torch


def _weight(instance, attribute, value) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"must be in [0, 1], got {value}", attribute)


def _fraction(instance, attribute, value) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"must be in (0, 1], got {value}", attribute)


@attrs.frozen(kw_only=True)
class FullOptions:
    decoder_loss_weight: float = attrs.field(default=0.5, validator=_weight)


@attrs.frozen(kw_only=True)
class AmortizedOptions(FullOptions):
    decoder_fraction: float = attrs.field(default=1 / 16, validator=_fraction)


class Full:
    """Every target frame trains the depth decoder."""

    def __init__(self, options: FullOptions):
        self.options = options

    def select_decoder_frames(self, target_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return target_mask

    def combine(self, parts: LossParts) -> torch.Tensor:
        w = self.options.decoder_loss_weight
        return (1 - w) * parts.c0 + w * parts.decoder


class Amortized(Full):
    """A uniform random `decoder_fraction` of the target frames (at least one) trains the decoder."""

    def select_decoder_frames(self, target_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import torch

        n_targets = int(target_mask.sum())  # the one host sync: the subset size must be a Python int
        selected = torch.zeros(target_mask.shape, dtype=torch.bool, device=target_mask.device)
        if n_targets == 0:
            return selected
        k = max(1, round(self.options.decoder_fraction * n_targets))
        # The k highest of i.i.d. uniform scores are a uniform k-subset; non-targets score -1 and are
        # never among them. Unlike nonzero()+randperm this needs no further sync on a GPU.
        scores = torch.rand(target_mask.shape, generator=generator, device=generator.device)
        scores = torch.where(target_mask, scores.to(target_mask.device), -1.0)
        selected.view(-1)[scores.view(-1).topk(k).indices] = True
        return selected


@hookimpl
def register_loss_strategies(register):
    register("full", Full, options=FullOptions)
    register("amortized", Amortized, options=AmortizedOptions)
