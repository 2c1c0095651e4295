"""One optimizer step: forward/backward over its micro-batches, then the update.

Shared by the training loop and the throughput benchmark, so the benchmark measures exactly the
step that trains.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import attrs
import torch

from csm_adapt.data.batches import Batch
from csm_adapt.plugin_api import LossParts, LossStrategy
from csm_adapt.training.distributed import Dist, all_reduce_sum
from csm_adapt.training.losses import codebook_accuracy, loss_parts


@attrs.define
class Totals:
    """Running sums between two log lines, kept on the device so the hot loop never syncs."""

    c0_ce: torch.Tensor
    decoder_ce: torch.Tensor
    c0_frames: torch.Tensor
    decoder_frames: torch.Tensor
    correct: torch.Tensor  # [K] top-1 hits per codebook
    loss: torch.Tensor  # sum of the optimizer steps' losses (this rank's share of each)
    rows: int = 0
    steps: int = 0

    @classmethod
    def zeros(cls, k: int, device) -> Totals:
        def z(*shape):
            return torch.zeros(*shape, device=device)

        return cls(z(()), z(()), z(()), z(()), z(k), z(()))

    def add(self, out, parts: LossParts) -> None:
        self.c0_ce += parts.c0.detach() * parts.c0_frames
        self.decoder_ce += parts.decoder.detach() * parts.decoder_frames
        self.c0_frames += parts.c0_frames
        self.decoder_frames += parts.decoder_frames
        acc = codebook_accuracy(out)
        self.correct[0] += acc[0] * parts.c0_frames
        self.correct[1:] += acc[1:] * parts.decoder_frames

    def reduce(self, prefix: str, d: Dist) -> tuple[dict[str, float], float, float]:
        """The interval's metrics, and its frame and row counts over all ranks (one all-reduce).

        `{prefix}/loss` is the mean loss of the interval's optimizer steps, as the strategy weighed
        them; it is absent when no step was taken (validation).
        """
        sums = torch.stack([self.c0_ce, self.decoder_ce, self.c0_frames, self.decoder_frames, self.loss])
        rows = torch.tensor([float(self.rows)], device=sums.device)
        packed = torch.cat([sums, rows, self.correct]).float()
        c0_ce, dec_ce, c0_n, dec_n, loss, rows, *correct = all_reduce_sum(packed, d).tolist()
        out = {f"{prefix}/loss_c0": c0_ce / max(c0_n, 1), f"{prefix}/loss_decoder": dec_ce / max(dec_n, 1)}
        if self.steps:
            out[f"{prefix}/loss"] = loss / self.steps
        out.update(
            {f"{prefix}/acc/c{i:02d}": hits / max(c0_n if i == 0 else dec_n, 1) for i, hits in enumerate(correct)}
        )
        return out, c0_n, rows


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def forward_batch(model, batch: Batch, decoder_mask: torch.Tensor | None, device: torch.device):
    """The rows go to the device; the masks that only define indices stay on the CPU, so that the
    forward pass never waits for the device (CSM.forward)."""

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=True)

    return model(
        move(batch.tokens), move(batch.mask), batch.target_mask, input_pos=move(batch.input_pos),
        doc_ids=batch.doc_ids, decoder_mask=decoder_mask,
    )  # fmt: skip


def backward_step(
    model: torch.nn.Module,
    forward: Callable,
    strategy: LossStrategy,
    batches: Sequence[Batch],
    decoder_masks: Sequence[torch.Tensor],
    totals: Totals,
    *,
    device: torch.device,
    precision: str,
    d: Dist,
    scaler: torch.amp.GradScaler,
    on_phase: Callable[[str], None] = lambda _: None,
) -> torch.Tensor:
    """Accumulate the gradients of one optimizer step; returns its loss (detached, on the device).

    The loss is a mean over every frame of the global step, whichever rank or micro-batch holds it:
    each micro-batch contributes its CE sums over the step's total frame counts. `model` is the
    (maybe DDP-wrapped) module, `forward` what to call (the same, or its torch.compile'd version).
    """
    counts = torch.tensor([sum(b.num_frames for b in batches), sum(int(m.sum()) for m in decoder_masks)], device=device)
    n_c0, n_dec = all_reduce_sum(counts.float(), d).clamp(min=1).unbind()
    total = torch.zeros((), device=device)
    for i, (batch, dmask) in enumerate(zip(batches, decoder_masks)):
        # DDP: all-reduce gradients only on the step's last micro-batch.
        no_sync = i < len(batches) - 1 and isinstance(model, torch.nn.parallel.DistributedDataParallel)
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(device, precision):
                out = forward_batch(forward, batch, dmask, device)
                parts = loss_parts(out)
                share = LossParts(
                    c0=parts.c0 * parts.c0_frames / n_c0, decoder=parts.decoder * parts.decoder_frames / n_dec,
                    c0_frames=parts.c0_frames, decoder_frames=parts.decoder_frames,
                )  # fmt: skip
                # DDP averages gradients over ranks; the loss is already a global mean.
                loss = strategy.combine(share) * d.world_size
            on_phase("forward")
            scaler.scale(loss).backward()
            on_phase("backward")
        total += loss.detach() / d.world_size
        totals.add(out, parts)
        totals.rows += batch.num_rows
    totals.loss += total
    totals.steps += 1
    return total


def optimizer_step(model: torch.nn.Module, optimizer, scaler: torch.amp.GradScaler, grad_clip: float) -> torch.Tensor:
    """Unscale, clip (0 = no clipping), step, zero the gradients; returns the gradient norm."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in model.parameters() if p.requires_grad], grad_clip if grad_clip > 0 else math.inf
    )
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
