"""Training throughput, MFU and memory of our step against the community step, over step sizes and precisions.

    python benchmarks/train_throughput.py --model tiny --device cpu --rows-per-step 2048,4096,16384
    python benchmarks/train_throughput.py --model csm-1b --device cuda --rows-per-step 2048,16384 --json out.json

Every method trains the same model (same config, same seed, same weights) on the same samples, the
same samples per optimizer step and the same decoder frames, so the ratios measure the step:

- ours: samples packed into sequences (Packer + collate, as the loader does), document-causal
  attention, the embedding_bag row embedding, fused AdamW, the `amortized` strategy (decoder on 1/16
  of the frames), optional torch.compile and activation checkpointing: csm_adapt/training/step.py,
  the calls of csm_adapt/training/loop.py. Measured in each `--precision` (default: bf16 on CUDA;
  fp32, and bf16 where the CPU has bf16 units). The headline uses the precision `train.precision =
  "auto"` picks (csm_adapt/training/precision.py).
- baseline, the community finetuning step as published, re-implemented on our module: one sample per
  sequence, micro-batches of `--baseline-batch` samples bucketed by frame count and padded to the
  longest, a dense [B, S, S] boolean mask, all 33 embedding columns materialised then masked and
  summed, and `torch.optim.AdamW(params, lr=, weight_decay=)` with PyTorch's defaults for the device
  (foreach on CUDA, the for-loop on CPU), as the community trainer builds it. Variants: `fp32`, and
  `amp` as its `--use_amp` runs (fp16 autocast + GradScaler on CUDA; bf16 autocast on a CPU with bf16
  units, where fp16 has none).
- community (only with `--community-code DIR`): SesameAILabs/csm's models.py and
  knottwill/sesame-finetune's forward and collate_fn, read from the user's checkouts at run time
  (benchmarks/community_code.py), on the same samples: a check that the baseline is faithful.

The headline ratio is ours against the FASTEST baseline (or community) variant at each step size.
`--rows-per-step` takes several sizes; each is split into micro-batches of at most `--rows` rows with
gradient accumulation, as the recipe's `rows_per_step` / `rows_per_micro_batch` are.

Throughput passes replay the measured steps with one device sync per pass (none per step); the
forward/backward/optimizer split comes from a separate pass that syncs around each phase. The
losses of the warm-up steps and the first pass are kept: variants of one method in two precisions
start from the same weights on the same data, so their losses show what the precision costs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from csm_adapt.config.schema import TrainConfig
from csm_adapt.data.batches import Batch, SampleRows, collate, sample_rows
from csm_adapt.data.loader import TrainLoader
from csm_adapt.data.packing import Packer
from csm_adapt.model.checkpoint import build_model
from csm_adapt.model.config import MODEL_CONFIGS, ModelArgs
from csm_adapt.model.csm import CSM, TrainOutput
from csm_adapt.plugin_api import LossParts
from csm_adapt.training.distributed import Dist
from csm_adapt.training.losses import loss_parts
from csm_adapt.training.optim import build_optimizer, set_trainable
from csm_adapt.training.precision import PRECISIONS, cpu_bf16_units, resolve_precision
from csm_adapt.training.step import Totals, autocast, backward_step, optimizer_step
from csm_adapt_plugins.loss_strategies import Amortized, AmortizedOptions

# Dense bf16 tensor-core peaks (no sparsity), matched in order against torch.cuda.get_device_name().
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)
MFU_FORMULA = (
    "model FLOPs per step = 6*N_bb*P + 12*L_bb*d_bb*A_bb + 6*d_bb*V*F"
    " + M*(6*N_dec*K + 6*d_bb*d_dec*K + 12*L_dec*d_dec*K(K+1)/2 + 6*d_dec*V*(K-1));"
    " N = transformer params without embeddings, P = real backbone rows (text incl.), A_bb = sum over rows of"
    " the keys each attends to, F = frames scored by codebook0_head, M = decoder frames, K = codebooks,"
    " V = audio vocab; padding does no model FLOPs. MFU = FLOPs per step * steps/s / peak bf16 FLOP/s"
)


@attrs.frozen
class Step:
    """One optimizer step's data in both layouts: packed batches (ours), padded batches (baseline)."""

    packed: tuple[tuple[Batch, torch.Tensor], ...]  # (batch, decoder mask [B, S])
    padded: tuple[tuple[Batch, torch.Tensor], ...]  # the same samples, one per sequence
    samples: int
    frames: int
    decoder_frames: int
    flops: float


# --- data -------------------------------------------------------------------------------------


def synthetic_samples(count: int, args: ModelArgs, seed: int) -> list[SampleRows]:
    """Utterances of 2-15 s (25-190 frames) after 10-60 text tokens, built by the loader's sample_rows."""
    rng = np.random.default_rng(seed)
    k, out = args.audio_num_codebooks, []
    for _ in range(count):
        frames, tokens = int(rng.integers(25, 191)), int(rng.integers(10, 61))
        codes = rng.integers(0, min(2048, args.audio_vocab_size), (k, frames))
        text = rng.integers(0, args.text_vocab_size, tokens)
        meta = {"turns": [{"text_tokens": tokens, "frames": frames, "target": True}]}
        out.append(sample_rows(codes, text, meta))
    return out


def synthetic_batches(count: int, args: ModelArgs, packer: Packer, seed: int) -> list[Batch]:
    samples = synthetic_samples(count, args, seed)
    return [
        collate([[samples[i] for i in seq] for seq in plan], [str(i) for seq in plan for i in seq], packer.pad_multiple)
        for plan in packer.plan([len(s) for s in samples])
    ]


def unpack(batch: Batch, decoder_mask: torch.Tensor) -> list[tuple[SampleRows, torch.Tensor]]:
    """The samples of a packed batch with their decoder masks; the padding tail (no columns set) is dropped."""
    out = []
    for i in range(batch.tokens.shape[0]):
        for doc in batch.doc_ids[i].unique():
            rows = batch.doc_ids[i] == doc
            if batch.mask[i, rows].any():
                sample = SampleRows(batch.tokens[i, rows], batch.mask[i, rows], batch.target_mask[i, rows])
                out.append((sample, decoder_mask[i, rows]))
    return out


def padded_batches(samples: list[tuple[SampleRows, torch.Tensor]], batch_size: int) -> list[tuple[Batch, torch.Tensor]]:
    """The community layout: one sample per sequence, `batch_size` samples per batch padded to the
    longest, bucketed by frame count (the community sampler's intent; its bug bucketed by len() == 32)."""
    by_frames = sorted(samples, key=lambda s: int(s[0].target_mask.sum()))
    out = []
    for start in range(0, len(by_frames), batch_size):
        chunk = by_frames[start : start + batch_size]
        batch = collate([[s] for s, _ in chunk], [""] * len(chunk))
        dmask = torch.nn.utils.rnn.pad_sequence([m for _, m in chunk], batch_first=True)
        out.append((batch, torch.nn.functional.pad(dmask, (0, batch.tokens.shape[1] - dmask.shape[1]))))
    return out


def make_steps(batches: list[Batch], accum: int, args: ModelArgs, seed: int, baseline_batch: int) -> list[Step]:
    """Groups `accum` batches per optimizer step and draws the decoder frames once, for both layouts.
    Batches are built here, outside the timed steps, as data loader workers would."""
    strategy, gen = Amortized(AmortizedOptions()), torch.Generator().manual_seed(seed)
    steps = []
    for start in range(0, len(batches) - accum + 1, accum):
        packed = tuple((b, strategy.select_decoder_frames(b.target_mask, gen)) for b in batches[start : start + accum])
        samples = [s for b, m in packed for s in unpack(b, m)]
        steps.append(
            Step(
                packed=packed,
                padded=tuple(padded_batches(samples, baseline_batch)),
                samples=len(samples),
                frames=sum(b.num_frames for b, _ in packed),
                decoder_frames=sum(int(m.sum()) for _, m in packed),
                flops=sum(model_flops(args, b, m) for b, m in packed),
            )
        )
    return steps


# --- model FLOPs --------------------------------------------------------------------------------


def model_flops(args: ModelArgs, batch: Batch, decoder_mask: torch.Tensor) -> float:
    """MFU_FORMULA for one batch: useful training FLOPs (forward + backward = 3x the forward's 2 per MAC)."""
    bb, dec, k, v = args.backbone, args.decoder, args.audio_num_codebooks, args.audio_vocab_size
    n_bb = bb.num_layers * _layer_params(bb) + bb.embed_dim
    n_dec = dec.num_layers * _layer_params(dec) + dec.embed_dim
    real = batch.mask.any(-1)
    rows = int(real.sum())
    keys = int((batch.input_pos[real] + 1).sum())  # causal within each sample
    frames, m = batch.num_frames, int(decoder_mask.sum())
    backbone = 6 * n_bb * rows + 12 * bb.num_layers * bb.embed_dim * keys + 6 * bb.embed_dim * v * frames
    decoder = m * (
        6 * n_dec * k
        + 6 * bb.embed_dim * dec.embed_dim * k  # projection
        + 12 * dec.num_layers * dec.embed_dim * k * (k + 1) // 2
        + 6 * dec.embed_dim * v * (k - 1)  # audio heads
    )
    return float(backbone + decoder)


def _layer_params(f) -> int:
    kv = f.num_kv_heads * f.head_dim
    return 2 * f.embed_dim * f.embed_dim + 2 * f.embed_dim * kv + 3 * f.embed_dim * f.intermediate_dim + 2 * f.embed_dim


# --- the steps --------------------------------------------------------------------------------

Clock = Callable[[str], None]  # marks the end of a phase; a no-op in throughput passes


@attrs.frozen
class Variant:
    """One measured configuration: a method ("ours", "baseline", "community") in one precision."""

    method: str
    precision: str  # fp32 / bf16 / fp16: the autocast dtype (fp16 also scales the loss)
    label: str  # how the table names it: "ours bf16", "baseline amp (bf16)"

    @property
    def name(self) -> str:
        return f"{self.method} {self.label}"


def our_step(model, optimizer, scaler, step: Step, device, precision: str, forward, clock: Clock) -> torch.Tensor:
    """csm_adapt/training/loop.py's step itself: backward_step over the micro-batches, then optimizer_step."""
    batches, masks = zip(*step.packed)
    loss = backward_step(
        model, forward, Amortized(AmortizedOptions()), batches, masks, Totals.zeros(model.num_codebooks, device),
        device=device, precision=precision, d=Dist(), scaler=scaler, on_phase=clock,
    )  # fmt: skip
    optimizer_step(model, optimizer, scaler, grad_clip=1.0)
    clock("optimizer")
    return loss


def baseline_step(model, optimizer, scaler, step: Step, device, precision: str, clock: Clock) -> torch.Tensor:
    """The community step over the same samples: padded micro-batches, dense mask; fp32 or autocast."""
    strategy = Amortized(AmortizedOptions())
    n_c0, n_dec = max(step.frames, 1), max(step.decoder_frames, 1)
    total = torch.zeros((), device=device)
    for batch, dmask in step.padded:
        batch = batch.to(device)
        with autocast(device, precision):
            out = baseline_forward(model, batch.tokens, batch.mask, batch.target_mask, dmask.to(device))
            parts = loss_parts(out)
            loss = strategy.combine(
                LossParts(parts.c0 * parts.c0_frames / n_c0, parts.decoder * parts.decoder_frames / n_dec, 0, 0)
            )
        clock("forward")
        scaler.scale(loss).backward()
        total += loss.detach()
        clock("backward")
    optimizer_step(model, optimizer, scaler, grad_clip=1.0)
    clock("optimizer")
    return total


def baseline_forward(model: CSM, tokens, mask, target_mask, decoder_mask) -> TrainOutput:
    """The community forward with our module's weights: dense padded mask, materialised embeddings."""
    k = model.num_codebooks
    b, s, _ = tokens.shape
    # Every column embedded ([B, S, K+1, D]), masked, summed: the reference generator's _embed_tokens.
    text = model.text_embeddings(tokens[..., k]).unsqueeze(2)
    audio = model.audio_embeddings(tokens[..., :k] + model._codebook_offsets(k, tokens.device))
    h = (torch.cat([audio, text], dim=2) * mask.unsqueeze(-1)).sum(2)
    # Dense [B, S, S]: causal among real rows; padding rows see themselves (no empty softmax row).
    real = mask.any(-1)
    causal = torch.ones(s, s, dtype=torch.bool, device=tokens.device).tril()
    eye = torch.eye(s, dtype=torch.bool, device=tokens.device)
    attn = (causal & real[:, :, None] & real[:, None, :]) | eye
    pos = torch.arange(s, device=tokens.device).expand(b, s)
    h = model.backbone(h, pos, attn.unsqueeze(1))

    h_prev, frames, targets = h[:, :-1], tokens[:, 1:, :k], target_mask[:, 1:]
    dec = decoder_mask[:, 1:] & targets
    dec_codes = frames[dec]
    return TrainOutput(
        c0_logits=model.codebook0_head(h_prev[targets]),
        c0_targets=frames[targets][:, 0],
        decoder_logits=model.decoder_logits(h_prev[dec], dec_codes),
        decoder_targets=dec_codes[:, 1:],
    )


def baseline_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """As the community trainer builds it: lr and weight decay, every other choice PyTorch's default
    for the device (the foreach implementation on CUDA, the for-loop one on CPU)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def amp_precision(device: torch.device) -> str | None:
    """What the community's `--use_amp` runs on this device: fp16 autocast (+ GradScaler) on CUDA,
    bf16 autocast on a CPU with bf16 units; None on a CPU without them (autocast would be emulated)."""
    if device.type == "cuda":
        return "fp16"
    return "bf16" if device.type == "cpu" and cpu_bf16_units() else None


def variants(opts: argparse.Namespace, device: torch.device) -> list[Variant]:
    """The variants to measure: ours in each `--precision`, the baseline (and community code) as
    `--baseline` lists them."""
    ours = []
    for p in opts.precision or default_precisions(device):
        p = resolve_precision(p, device)
        if p not in ours:
            ours.append(p)
    amp = amp_precision(device)
    others = []
    for kind in opts.baseline or (["fp32", "amp"] if amp else ["fp32"]):
        if kind == "amp" and amp is None:
            raise SystemExit(
                f"--baseline amp: {device} has no bf16 units (CPU flags: none of amx_bf16, avx512_bf16, bf16), "
                "so the community's autocast would run emulated; measure --baseline fp32"
            )
        others.append(("fp32", "fp32") if kind == "fp32" else (amp, f"amp ({amp})"))
    methods = ["baseline", "community"] if opts.community_code else ["baseline"]
    return [Variant("ours", p, p) for p in ours] + [Variant(m, p, label) for m in methods for p, label in others]


def default_precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["bf16"]
    return ["fp32", "bf16"] if cpu_bf16_units() else ["fp32"]


# --- measuring ----------------------------------------------------------------------------------


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS that getrusage reports
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory(device) -> dict:
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return out


def measure(
    run_step: Callable[[Step, Clock], torch.Tensor], steps: list[Step], warmup: int, repeats: int, device
) -> dict:
    """Medians over `repeats` passes of the measured steps, after `warmup` steps; then the phase split.
    The losses of the warm-up and the first pass are returned, read after the timing."""
    no_clock: Clock = lambda phase: None  # noqa: E731
    losses = [run_step(step, no_clock) for step in steps[:warmup]]
    measured = steps[warmup:]
    _sync(device)
    passes = []
    for i in range(repeats):
        start = time.perf_counter()
        for step in measured:
            loss = run_step(step, no_clock)
            if i == 0:
                losses.append(loss)
        _sync(device)
        passes.append(time.perf_counter() - start)
    seconds = statistics.median(passes)

    phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for step in measured:
        spent = dict.fromkeys(phases, 0.0)
        last = [time.perf_counter()]

        def clock(phase: str, spent=spent, last=last) -> None:
            _sync(device)
            now = time.perf_counter()
            spent[phase] += now - last[0]
            last[0] = now

        run_step(step, clock)
        for phase, t in spent.items():
            phases[phase].append(t)

    rows = sum(int(b.mask.any(-1).sum()) for s in measured for b, _ in s.packed)
    return {
        "steps": len(measured),
        "pass_seconds": passes,
        "frames_per_s": sum(s.frames for s in measured) / seconds,
        "backbone_positions_per_s": rows / seconds,
        "optimizer_steps_per_s": len(measured) / seconds,
        "model_flops_per_s": sum(s.flops for s in measured) / seconds,
        "phase_ms_median": {p: 1000 * statistics.median(t) for p, t in phases.items()},
        "losses": [float(loss) for loss in losses],
    }


def peak_flops(device, override: float | None) -> float | None:
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)
    return None


def machine(device) -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    out = {
        "cpu": cpu,
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_units": cpu_bf16_units(),  # /proc/cpuinfo flag, or None
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _step_fn(
    variant: Variant, args: ModelArgs, cfg: TrainConfig, device, opts, community=None, steps: list[Step] = ()
) -> Callable[[Step, Clock], torch.Tensor]:
    """A fresh model (same seed: same weights for every variant) and optimizer, and its step."""
    model = build_model(args, seed=opts.seed, device=device).train()
    scaler = torch.amp.GradScaler(device.type, enabled=variant.precision == "fp16")
    if variant.method == "community":
        return community.step_fn(model, cfg, device, variant.precision, steps, clip=1.0)
    if variant.method == "baseline":
        optimizer = baseline_optimizer(model, cfg)
        return lambda step, clock: baseline_step(model, optimizer, scaler, step, device, variant.precision, clock)
    set_trainable(model, cfg)
    model.backbone.checkpoint_layers = model.decoder.checkpoint_layers = cfg.activation_checkpointing
    optimizer = build_optimizer(model, cfg)
    forward = torch.compile(model) if cfg.compile else model
    return lambda step, clock: our_step(model, optimizer, scaler, step, device, variant.precision, forward, clock)


def build_steps(opts: argparse.Namespace, args: ModelArgs, rows_per_step: int) -> tuple[list[Step], int, int]:
    """The steps of one step size: (steps, rows per micro-batch, micro-batches per step)."""
    micro = min(opts.rows, rows_per_step)
    if rows_per_step % micro:
        raise SystemExit(f"--rows-per-step {rows_per_step} is not a multiple of the micro-batch ({micro} rows)")
    accum = rows_per_step // micro
    packer = Packer(max_rows=min(opts.max_rows, micro), rows_per_batch=micro, pad_multiple=opts.pad_multiple)
    n_batches = (opts.warmup + opts.steps) * accum
    if opts.data:
        it = iter(TrainLoader(opts.data, packer, seed=opts.seed, num_workers=0))
        batches = [next(it) for _ in range(n_batches)]
    else:
        # ~1.3x the samples the steps need: the pool's sparse last batches are left unused.
        per_batch = max(1, micro // 150)
        batches = synthetic_batches(int(n_batches * per_batch * 1.3) + 8, args, packer, opts.seed)[:n_batches]
    steps = make_steps(batches, accum, args, opts.seed, opts.baseline_batch)
    if len(steps) < opts.warmup + opts.steps:
        raise SystemExit(f"only {len(steps)} steps of data for --warmup {opts.warmup} + --steps {opts.steps}")
    return steps, micro, accum


def loss_gaps(results: dict[str, dict], chosen: list[Variant]) -> dict[str, float]:
    """Per variant not in fp32: the largest relative difference of its losses from the same method's
    fp32 losses over the warm-up steps and the first pass (same weights, same data)."""
    out = {}
    for v in chosen:
        ref = next((r for r in chosen if r.method == v.method and r.precision == "fp32"), None)
        if ref is None or ref == v:
            continue
        a, b = results[v.name]["losses"], results[ref.name]["losses"]
        out[v.name] = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    return out


def community_code_module():
    """benchmarks/community_code.py, beside this script (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("community_code", Path(__file__).with_name("community_code.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(opts: argparse.Namespace) -> dict:
    device = torch.device(opts.device)
    args = MODEL_CONFIGS[opts.model]
    chosen = variants(opts, device)
    community = None
    if opts.community_code:
        code = community_code_module()
        try:
            community = code.load(opts.community_code, args)
        except code.CommunityCodeError as e:
            raise SystemExit(f"--community-code: {e}") from None
    cfg = TrainConfig(activation_checkpointing=opts.activation_checkpointing, compile=opts.compile)
    headline_precision = resolve_precision("auto", device)
    ours = [v for v in chosen if v.method == "ours"]
    headline = next((v for v in ours if v.precision == headline_precision), ours[0])
    peak = peak_flops(device, opts.peak_flops)

    report = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}
        | {"variants": [v.name for v in chosen], "headline": headline.name},
        "machine": machine(device),
        "peak_flops": peak,
        "mfu_formula": MFU_FORMULA,
        "community_code": community.sources if community else None,
        "sizes": [],
    }
    for rows_per_step in opts.rows_per_step:
        steps, micro, accum = build_steps(opts, args, rows_per_step)
        results = {}
        for variant in chosen:
            _reset_peak_memory(device)
            run_step = _step_fn(variant, args, cfg, device, opts, community, steps)
            results[variant.name] = measure(run_step, steps, opts.warmup, opts.repeats, device) | _peak_memory(device)
            results[variant.name]["mfu"] = results[variant.name]["model_flops_per_s"] / peak if peak else None
            fps = results[variant.name]["frames_per_s"]
            print(f"{rows_per_step} rows/step, {variant.name}: {fps:,.0f} frames/s", file=sys.stderr, flush=True)
            del run_step  # frees the model and optimizer state before the next variant's peak is taken
        others = {v.name: results[v.name]["frames_per_s"] for v in chosen if v.method != "ours"}
        fastest = max(others, key=others.get)
        measured = steps[opts.warmup :]
        report["sizes"].append(
            {
                "rows_per_step": rows_per_step,
                "rows_per_micro_batch": micro,
                "accum": accum,
                "data": {
                    "samples_per_step": statistics.mean(s.samples for s in measured),
                    "frames_per_step": statistics.mean(s.frames for s in measured),
                    "decoder_frames_per_step": statistics.mean(s.decoder_frames for s in measured),
                },
                "results": results,
                "ours": headline.name,
                "fastest_baseline": fastest,
                "ratio_frames_per_s": results[headline.name]["frames_per_s"] / others[fastest],
                "ratios": {o.name: {b: results[o.name]["frames_per_s"] / f for b, f in others.items()} for o in ours},
                "loss_rel_gap": loss_gaps(results, chosen),
            }
        )
        if opts.json:  # after each size: a long sweep that is stopped keeps what it measured
            opts.json.write_text(json.dumps(report, indent=2))
    return report


def print_tables(report: dict) -> None:
    cfg, m = report["config"], report["machine"]
    console = Console(width=None if Console().is_terminal else 170)  # a log file keeps whole columns
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_threads']} threads, bf16 units: {m['cpu_bf16_units'] or 'none'})"
    table = Table(title=f"{cfg['model']} on {where}, torch {m['torch']}: frames/s and ms per optimizer step")
    cuda = "gpu" in m
    columns = ["rows/step", "variant", "frames/s", "x fastest baseline", "forward ms", "backward ms", "optimizer ms",
               "MFU", "peak RSS MiB", "CUDA max alloc MiB", "loss gap vs fp32"]  # fmt: skip
    for col in columns if cuda else [c for c in columns if c != "CUDA max alloc MiB"]:
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for size in report["sizes"]:
        fastest = size["fastest_baseline"]
        for i, (name, r) in enumerate(size["results"].items()):
            ratio = size["ratios"].get(name, {}).get(fastest)
            gap = size["loss_rel_gap"].get(name)
            phase = r["phase_ms_median"]
            table.add_row(
                f"{size['rows_per_step']:,} ({size['accum']}x{size['rows_per_micro_batch']:,})" if i == 0 else "",
                f"[bold]{name}[/bold]" if name in (size["ours"], fastest) else name,
                f"{r['frames_per_s']:,.0f}",
                f"{ratio:.2f}x" if ratio is not None else ("fastest" if name == fastest else ""),
                f"{phase['forward']:,.0f}",
                f"{phase['backward']:,.0f}",
                f"{phase['optimizer']:,.0f}",
                f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a",
                f"{r['peak_rss_mib']:,.0f}",
                *([f"{r['cuda_max_allocated_mib']:,.0f}"] if cuda else []),
                f"{gap:.1e}" if gap is not None else "",
                end_section=i == len(size["results"]) - 1,
            )
    console.print(table)
    for size in report["sizes"]:
        console.print(
            f"{size['rows_per_step']:,} rows/step: {size['ours']} / fastest baseline ({size['fastest_baseline']}) "
            f"frames/s = [bold]{size['ratio_frames_per_s']:.2f}x[/bold]"
        )
    if report["community_code"]:
        console.print(f"community code: {report['community_code']}")
    console.print(f"[dim]{report['mfu_formula']}; peak = {report['peak_flops'] or 'n/a (pass --peak-flops)'}[/dim]")


def _csv(kind):
    def parse(text: str) -> list:
        return [kind(item) for item in text.split(",") if item]

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--rows-per-step",
        type=_csv(int),
        default=[2048, 4096, 16384],
        help="rows per optimizer step, comma-separated sizes: one table row group each (default %(default)s)",
    )
    p.add_argument(
        "--rows",
        type=int,
        default=4096,
        help="rows per micro-batch at most (train.rows_per_micro_batch); larger steps accumulate",
    )
    p.add_argument("--max-rows", type=int, default=2048, help="rows of one packed sequence (data.max_rows)")
    p.add_argument("--pad-multiple", type=int, default=64)
    p.add_argument(
        "--precision",
        type=_csv(str),
        help="ours, comma-separated from auto,bf16,fp16,fp32 (default: bf16 on CUDA; fp32 and, on a CPU "
        "with bf16 units, bf16)",
    )
    p.add_argument(
        "--baseline",
        type=_csv(str),
        help="baseline variants, comma-separated from fp32,amp (default: both where amp has units)",
    )
    p.add_argument(
        "--community-code",
        type=Path,
        metavar="DIR",
        help="also run the community's own code: DIR holds checkouts csm/ (SesameAILabs/csm) and "
        "sesame-finetune/ (knottwill/sesame-finetune)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--baseline-batch", type=int, default=8, help="samples per baseline micro-batch")
    p.add_argument("--steps", type=int, default=6, help="measured optimizer steps per pass")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="passes over the measured steps; the median counts")
    p.add_argument("--data", type=Path, help="prepared data dir (default: seeded synthetic samples)")
    p.add_argument("--peak-flops", type=float, help="device peak FLOP/s for MFU (needed on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the report here")
    opts = p.parse_args(argv)  # fmt: skip
    bad = [x for x in opts.precision or () if x not in PRECISIONS] + [
        x for x in opts.baseline or () if x not in ("fp32", "amp")
    ]
    if bad:
        p.error(f"unknown precision/variant {bad}: --precision takes {','.join(PRECISIONS)}, --baseline fp32,amp")
    if not opts.rows_per_step or min(opts.rows_per_step) <= 0:
        p.error("--rows-per-step needs positive sizes")
    return opts


def main(argv: list[str] | None = None) -> dict:
    opts = parse_args(argv)
    report = run(opts)
    print_tables(report)
    return report


if __name__ == "__main__":
    main()
