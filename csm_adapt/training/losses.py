"""The two loss parts of a training forward and per-codebook accuracy; strategies combine the parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from csm_adapt.model.csm import TrainOutput
from csm_adapt.plugin_api import LossParts


def loss_parts(out: TrainOutput) -> LossParts:
    """Token-mean cross-entropy of codebook 0 (backbone) and of codebooks 1..31 (depth decoder)."""
    return LossParts(
        c0=_mean_cross_entropy(out.c0_logits, out.c0_targets),
        decoder=_mean_cross_entropy(out.decoder_logits.flatten(0, 1), out.decoder_targets.flatten()),
        c0_frames=out.c0_targets.shape[0],
        decoder_frames=out.decoder_targets.shape[0],
    )


def codebook_accuracy(out: TrainOutput) -> torch.Tensor:
    """Top-1 accuracy per codebook, [32]: codebook 0 over every scored frame, 1..31 over the decoder's.

    A codebook scored on no frame reads 0.
    """
    with torch.no_grad():
        c0 = _mean_or_zero(out.c0_logits.argmax(-1) == out.c0_targets).reshape(1)
        decoder = _mean_or_zero(out.decoder_logits.argmax(-1) == out.decoder_targets)
        return torch.cat([c0, decoder])


def _mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.numel() == 0:
        # The mean over nothing is NaN. A zero built from the logits keeps the unused heads in the
        # autograd graph (zero gradients), which DDP needs to see on every rank.
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets)


def _mean_or_zero(correct: torch.Tensor) -> torch.Tensor:
    """Mean over the first (frame) dimension."""
    if correct.shape[0] == 0:
        return torch.zeros(correct.shape[1:], device=correct.device)
    return correct.float().mean(0)
