"""The memory planner: a recipe's predicted peak training memory, split into what holds it.

`plan_memory(recipe)` counts the weights, gradients and optimizer states exactly (memory/params.py:
the model built on the meta device with the recipe's adapter), models the activations analytically
(memory/activations.py), and walks the phases of two optimizer steps, as the training loop runs them:
each micro-batch's forward (block by block), its backward (saved tensors released and gradients
created block by block, in autograd's order), and the optimizer step. The peak is the largest of
those points; the split says what was alive there. `measure_peak` (memory/measure.py) checks it.

Assumptions about the data, stated because they set the activation size: every micro-batch is full
(B = rows_per_micro_batch // S sequences of S = data.max_rows rows, rounded up to pad_multiple),
`frame_share` of the rows are scored audio frames (the rest text), and each sequence holds samples
of `sample_rows` rows (None: one sample filling it). The decoder's frames are the loss strategy's
own choice, drawn once on such a batch.
"""

from __future__ import annotations

import attrs
import torch

from csm_adapt.config.schema import Recipe
from csm_adapt.data.batches import padded_length
from csm_adapt.memory.activations import Block, Shapes, activation_blocks
from csm_adapt.memory.params import ModelFacts, model_facts, optimizer_state_bytes
from csm_adapt.model.config import MODEL_CONFIGS
from csm_adapt.training.precision import resolve_precision

GIB = 1024**3
# Not counted by the CUDA caching allocator's statistics, so shown beside the total: the CUDA
# context (kernels, cuBLAS/cuDNN workspaces) and the allocator's fragmentation.
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
FRAGMENTATION = 0.10


@attrs.frozen
class Workload:
    """The shapes and settings of one optimizer step that memory depends on."""

    batch: int  # sequences per micro-batch
    seq_len: int  # rows per sequence
    accum: int  # micro-batches per optimizer step
    frame_share: float  # scored audio frames per row
    decoder_share: float  # of the scored frames, the share given to the depth decoder
    sample_rows: int  # rows of the longest sample in a sequence
    precision: str  # resolved: fp32, bf16, fp16
    checkpointing: bool
    optimizer: str
    device: str  # "cuda" or "cpu"

    @property
    def rows(self) -> int:
        return self.batch * self.seq_len

    def shapes(self) -> Shapes:
        layout = sample_layout(self)
        frames = self.batch * sum(audio for _, audio in layout)
        return Shapes(
            batch=self.batch,
            seq_len=self.seq_len,
            frames=frames,
            decoder_frames=max(1, round(frames * self.decoder_share)) if frames else 0,
            attention_rows=self.batch * len(layout) * max(text + audio for text, audio in layout),
            samples=self.batch * len(layout),
            compute_bytes=4 if self.precision == "fp32" else 2,
            checkpointing=self.checkpointing,
        )


def sample_layout(workload: Workload) -> list[tuple[int, int]]:
    """(text rows, audio rows) of each sample packed in one sequence: samples of `sample_rows` rows
    and a last one that fills the sequence, each `frame_share` audio (scored) after its text."""
    lengths = []
    left = workload.seq_len
    while left > 0:
        lengths.append(min(workload.sample_rows, left))
        left -= lengths[-1]
    return [(n - max(1, round(n * workload.frame_share)), max(1, round(n * workload.frame_share))) for n in lengths]


def workload_of(
    recipe: Recipe, device: str | None = None, *, frame_share: float = 0.9, sample_rows: int | None = None
) -> Workload:
    """The recipe's workload on `device` ("cuda"/"cpu"; None: the recipe's, with "auto" planning for CUDA)."""
    cfg = recipe.train
    if device is None:
        device = "cuda" if cfg.device in ("auto", "cuda") or cfg.device.startswith("cuda") else "cpu"
    seq_len = padded_length(recipe.data.max_rows, cfg.pad_multiple)
    return Workload(
        batch=max(1, cfg.rows_per_micro_batch // seq_len),
        seq_len=seq_len,
        accum=max(1, cfg.rows_per_step // cfg.rows_per_micro_batch),
        frame_share=frame_share,
        decoder_share=decoder_share(recipe, seq_len, frame_share),
        sample_rows=sample_rows or seq_len,
        precision=resolve_precision(cfg.precision, torch.device(device)),
        checkpointing=cfg.activation_checkpointing,
        optimizer=cfg.optimizer,
        device=device,
    )


def decoder_share(recipe: Recipe, seq_len: int, frame_share: float) -> float:
    """The share of scored frames the recipe's loss strategy gives the depth decoder (any strategy:
    asked on a sequence of `seq_len` rows with `frame_share` frames)."""
    target = torch.zeros(1, seq_len, dtype=torch.bool)
    target[0, 1 : max(2, int(seq_len * frame_share))] = True
    chosen = recipe.loss.create().select_decoder_frames(target, torch.Generator().manual_seed(0))
    return float(chosen.sum()) / float(target.sum())


@attrs.frozen
class MemoryPlan:
    """Predicted peak bytes and what is alive there."""

    workload: Workload
    weights_trainable: dict[str, int]  # by dtype
    weights_frozen: dict[str, int]
    gradients: int  # alive at the peak
    optimizer_states: int  # alive at the peak
    activations: int  # saved for the backward pass (and kept logits, inputs) at the peak
    weight_copies: int  # of `activations`: compute-dtype copies of weights (autocast)
    temporaries: int  # working buffers of the op running at the peak
    phase: str  # where the peak is
    full_gradients: int  # every trainable parameter's gradient
    full_optimizer_states: int
    trainable_params: int
    frozen_params: int
    activations_by_part: dict[str, int]  # saved activations at the end of the forward pass

    @property
    def weights(self) -> int:
        return sum(self.weights_trainable.values()) + sum(self.weights_frozen.values())

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_states + self.activations + self.temporaries

    @property
    def cuda_overhead(self) -> int:
        """Beyond `total` on CUDA: context, and fragmentation of the caching allocator."""
        return CUDA_CONTEXT_BYTES + int(self.total * FRAGMENTATION) if self.workload.device == "cuda" else 0

    def to_dict(self) -> dict:
        return {
            "total_bytes": self.total,
            "weights": {"trainable": self.weights_trainable, "frozen": self.weights_frozen},
            "gradients": self.gradients,
            "optimizer_states": self.optimizer_states,
            "activations": self.activations,
            "weight_copies": self.weight_copies,
            "temporaries": self.temporaries,
            "cuda_overhead": self.cuda_overhead,
            "peak_phase": self.phase,
            "full_gradients": self.full_gradients,
            "full_optimizer_states": self.full_optimizer_states,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "activations_by_part": self.activations_by_part,
            "workload": attrs.asdict(self.workload),
        }


def plan_memory(recipe: Recipe, device: str | None = None, **workload_options) -> MemoryPlan:
    """The recipe's predicted peak memory (one rank; see the module docstring for the assumptions)."""
    workload = workload_of(recipe, device, **workload_options)
    facts = model_facts(MODEL_CONFIGS[recipe.model.config], recipe.adapter, recipe.train.frozen_dtype)
    return plan(facts, workload)


def plan(facts: ModelFacts, workload: Workload, blocks: list[Block] | None = None) -> MemoryPlan:
    """Walk two optimizer steps' phases over `blocks` (default: the activation model's)."""
    blocks = blocks if blocks is not None else activation_blocks(facts, workload.shapes())
    states = optimizer_state_bytes(facts, workload.optimizer)
    inputs = _input_bytes(workload, facts)
    points: list[_Point] = []
    for step, opt in ((1, 0), (2, states)):
        for micro in range(workload.accum):
            accumulating = micro > 0
            prev_kept = sum(b.kept for b in blocks) if accumulating else 0
            points += _micro_batch(blocks, facts, opt, inputs, accumulating, prev_kept, f"step {step}")
        # The optimizer step: fused AdamW updates in place; torchao's compiled 8-bit step dequantises
        # one parameter's moments at a time, fused, without whole-tensor temporaries.
        points.append(_Point(f"step {step} optimizer", facts.gradient_bytes, states, 0, 0, 0))
    peak = max(points, key=lambda p: p.total)
    by_part: dict[str, int] = {}
    for b in blocks:
        by_part[b.part] = by_part.get(b.part, 0) + b.saved + b.kept
    return MemoryPlan(
        workload=workload,
        weights_trainable=dict(facts.trainable),
        weights_frozen=dict(facts.frozen),
        gradients=peak.grads,
        optimizer_states=peak.states,
        activations=peak.activations,
        weight_copies=peak.weight_copies,
        temporaries=peak.temporaries,
        phase=peak.phase,
        full_gradients=facts.gradient_bytes,
        full_optimizer_states=states,
        trainable_params=facts.trainable_numel,
        frozen_params=facts.frozen_numel,
        activations_by_part=by_part,
    )


@attrs.frozen
class _Point:
    phase: str
    grads: int
    states: int
    activations: int
    weight_copies: int
    temporaries: int

    @property
    def total(self) -> int:
        return self.grads + self.states + self.activations + self.temporaries


def _micro_batch(
    blocks: list[Block], facts: ModelFacts, states: int, inputs: int, accumulating: bool, prev_kept: int, label: str
) -> list[_Point]:
    """The points of one micro-batch: after each block's forward, then during each block's backward."""
    points = []
    grads = facts.gradient_bytes if accumulating else 0
    saved = copies = kept = cache = 0
    for b in blocks:
        saved, copies, kept, cache = saved + b.saved, copies + b.weight_copies, kept + b.kept, cache + b.cache
        act = inputs + saved + kept + prev_kept
        points.append(_Point(f"{label} forward ({b.name})", grads, states, act, copies, b.forward_extra + cache))
    # The autocast cache is emptied when the forward pass (and its loss) leaves autocast; the previous
    # micro-batch's TrainOutput is replaced once this one's forward returned.
    for b in reversed(blocks):
        # Accumulating into existing gradients makes each new gradient a temporary first.
        if accumulating:
            extra = b.backward_extra + b.grads
        else:
            grads += b.grads
            extra = b.backward_extra
        act = inputs + saved + kept
        points.append(_Point(f"{label} backward ({b.name})", grads, states, act, copies, extra))
        saved, copies = saved - b.saved, copies - b.weight_copies
    return points


def _input_bytes(workload: Workload, facts: ModelFacts) -> int:
    """The micro-batch's tensors on the device: tokens, mask and positions (and the per-sample
    attention index). On a CPU the loop holds the whole step's micro-batches (they are the device's)."""
    k = facts.args.audio_num_codebooks
    shapes = workload.shapes()
    per_batch = workload.rows * ((k + 1) * 9 + 8) + shapes.attention_rows * 8
    if workload.device == "cpu":
        per_batch += workload.rows * (1 + 8)  # target mask and doc ids stay on the CPU
        return per_batch * workload.accum
    return per_batch
