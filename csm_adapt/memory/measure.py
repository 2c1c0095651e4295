"""Measured peak memory of a recipe's optimizer steps, to check the planner against.

`measure_peak` trains `steps` real optimizer steps of the recipe's configuration (its model config
with random weights, its adapter, optimizer, precision and activation checkpointing, the training
loop's step code and optimizer builder) on random micro-batches shaped as the planner assumes
(memory.plan.Workload), and returns the peak bytes of tensor memory:

- CUDA: `torch.cuda.max_memory_allocated`, everything the caching allocator handed out (not the
  context, not the cache's unused reserve).
- CPU: PyTorch keeps no allocator statistics there. The profiler with `profile_memory=True` records
  every allocation and free of the CPU allocator, in order, including those made inside operators
  (attention workspaces, fused optimizer buffers), which a TorchDispatchMode tracker of operator
  outputs would miss; the running sum of those events plus the bytes alive when it starts (weights,
  the step's batches) is the peak. Process RSS would not do: the allocator (glibc) keeps freed pages.
"""

from __future__ import annotations

import gc
import time

import attrs
import torch

from csm_adapt.config.schema import Recipe
from csm_adapt.data.batches import Batch, SampleRows, collate
from csm_adapt.memory.plan import Workload, sample_layout, workload_of
from csm_adapt.model.checkpoint import build_model
from csm_adapt.training.adapters import decide_trainable
from csm_adapt.training.distributed import Dist, pick_device
from csm_adapt.training.optim import build_optimizer
from csm_adapt.training.precision import resolve_precision
from csm_adapt.training.step import Totals, backward_step, optimizer_step


@attrs.frozen
class Measurement:
    peak_bytes: int
    device: str
    steps: int
    micro_batches: int  # per step
    method: str  # how the peak was read
    seconds_per_step: float  # of the measured steps (on a CPU, slowed by the profiler)


def measure_peak(recipe: Recipe, *, steps: int = 2, seed: int = 0, **workload_options) -> Measurement:
    """Peak bytes of `steps` optimizer steps of the recipe on its device (at least 2: the optimizer
    states appear in the first step)."""
    if steps < 2:
        raise ValueError("measure at least 2 optimizer steps: the optimizer states appear in the first")
    cfg = recipe.train
    device = pick_device(cfg.device, 0)
    workload = workload_of(recipe, device.type, **workload_options)
    precision = resolve_precision(cfg.precision, device)
    recipe = attrs.evolve(recipe, train=attrs.evolve(cfg, precision=precision))
    cfg = recipe.train

    model = build_model(recipe.model.config, seed=cfg.seed, device=device)
    decide_trainable(recipe, model)  # what trains: exactly as the loop decides
    model.backbone.checkpoint_layers = model.decoder.checkpoint_layers = cfg.activation_checkpointing
    model.train()
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    strategy = recipe.loss.create()
    gen = torch.Generator().manual_seed(seed)
    micro = [synthetic_batch(workload, model.args, seed + i) for i in range(workload.accum)]
    masks = [strategy.select_decoder_frames(b.target_mask, gen) for b in micro]

    def run() -> None:
        for _ in range(steps):
            totals = Totals.zeros(model.num_codebooks, device)
            backward_step(
                model, model, strategy, micro, masks, totals,
                device=device, precision=precision, d=Dist(), scaler=scaler,
            )  # fmt: skip
            optimizer_step(model, optimizer, scaler, cfg.grad_clip)

    gc.collect()
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        peak, method = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    else:
        alive = live_bytes([*model.parameters(), *model.buffers()] + [t for b in micro for t in _tensors(b)])
        peak, method = alive + profiled_peak(run), "profiler allocation events + bytes alive at start"
    seconds = (time.perf_counter() - start) / steps
    return Measurement(peak, str(device), steps, workload.accum, method, seconds)


def synthetic_batch(workload: Workload, args, seed: int) -> Batch:
    """A full micro-batch as the planner assumes it: B sequences of S rows, each packed with samples of
    text rows then audio rows (the audio rows scored), random tokens."""
    g = torch.Generator().manual_seed(seed)
    k = args.audio_num_codebooks
    sequences = []
    for _ in range(workload.batch):
        samples = []
        for text, audio in sample_layout(workload):
            tokens = torch.zeros(text + audio, k + 1, dtype=torch.long)
            mask = torch.zeros(text + audio, k + 1, dtype=torch.bool)
            tokens[:text, k] = torch.randint(0, args.text_vocab_size, (text,), generator=g)
            mask[:text, k] = True
            tokens[text:, :k] = torch.randint(0, args.audio_vocab_size, (audio, k), generator=g)
            mask[text:, :k] = True
            target = torch.zeros(text + audio, dtype=torch.bool)
            target[text:] = True
            target[0] = False
            samples.append(SampleRows(tokens, mask, target))
        sequences.append(samples)
    ids = [f"s{i}" for i in range(sum(len(s) for s in sequences))]
    return collate(sequences, ids, workload.seq_len)


def _tensors(batch: Batch) -> list[torch.Tensor]:
    return [batch.tokens, batch.mask, batch.target_mask, batch.input_pos, batch.doc_ids]


def live_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (a tensor subclass, e.g. NF4: its inner tensors)."""
    seen: dict[int, int] = {}

    def visit(t: torch.Tensor) -> None:
        flatten = getattr(type(t), "__tensor_flatten__", None)
        if flatten is not None and type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
            names, _ = t.__tensor_flatten__()
            for name in names:
                visit(getattr(t, name))
            return
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()

    for t in tensors:
        visit(t.data if isinstance(t, torch.nn.Parameter) else t)
    return sum(seen.values())


def profiled_peak(fn) -> int:
    """The highest running sum of the CPU allocator's allocation events while `fn` runs (bytes above
    what was alive when it started)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())  # stable: an allocation and a free in the same ns keep their order
    running = peak = 0
    for nbytes in (e.nbytes() for e in events if e.device_type() == torch.autograd.DeviceType.CPU):
        running += nbytes
        peak = max(peak, running)
    return peak
