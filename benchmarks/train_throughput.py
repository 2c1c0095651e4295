"""Training throughput, MFU and memory of our step, side by side with the community step on the same data.

    python benchmarks/train_throughput.py --model csm-1b --device cuda --rows 2048 --json out.json
    python benchmarks/train_throughput.py --model tiny --device cpu

Both steps train the same model (same config, same seed, same weights) on the same samples, the
same samples per optimizer step and the same decoder frames, so the ratio measures the step:

- ours: samples packed into sequences of up to `--rows` rows (Packer + collate, as the loader does),
  document-causal attention, the embedding_bag row embedding, bf16 autocast (CUDA), fused AdamW,
  the `amortized` strategy (decoder on 1/16 of the frames), optional torch.compile and activation
  checkpointing: the same calls as csm_adapt/training/loop.py's inner loop.
- baseline (the community finetuning step as published, re-implemented): one sample per sequence, micro-batches of
  `--baseline-batch` samples bucketed by frame count and padded to the longest, a dense [B, S, S]
  boolean mask, all 33 embedding columns materialised then masked and summed, fp32, unfused AdamW.

Throughput passes replay the measured steps with one device sync per pass (none per step); the
forward/backward/optimizer split comes from a separate pass that syncs around each phase.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import resource
import statistics
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
from csm_adapt.training.step import Totals, backward_step, optimizer_step
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


# --- the two steps ------------------------------------------------------------------------------

Clock = Callable[[str], None]  # marks the end of a phase; a no-op in throughput passes


def our_step(model, optimizer, step: Step, device, precision: str, forward, clock: Clock) -> torch.Tensor:
    """csm_adapt/training/loop.py's step itself: backward_step over the micro-batches, then optimizer_step."""
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batches, masks = zip(*step.packed)
    loss = backward_step(
        model, forward, Amortized(AmortizedOptions()), batches, masks, Totals.zeros(model.num_codebooks, device),
        device=device, precision=precision, d=Dist(), scaler=scaler, on_phase=clock,
    )  # fmt: skip
    optimizer_step(model, optimizer, scaler, grad_clip=1.0)
    clock("optimizer")
    return loss


def baseline_step(model, optimizer, step: Step, device, clock: Clock) -> torch.Tensor:
    """The community step over the same samples: padded micro-batches, fp32, unfused AdamW."""
    strategy = Amortized(AmortizedOptions())
    n_c0, n_dec = max(step.frames, 1), max(step.decoder_frames, 1)
    total = torch.zeros((), device=device)
    for batch, dmask in step.padded:
        batch = batch.to(device)
        out = baseline_forward(model, batch.tokens, batch.mask, batch.target_mask, dmask.to(device, non_blocking=True))
        parts = loss_parts(out)
        loss = strategy.combine(
            LossParts(parts.c0 * parts.c0_frames / n_c0, parts.decoder * parts.decoder_frames / n_dec, 0, 0)
        )
        clock("forward")
        loss.backward()
        total += loss.detach()
        clock("backward")
    optimizer_step(model, optimizer, torch.amp.GradScaler(device.type, enabled=False), grad_clip=1.0)
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
    return torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
        foreach=False,
        fused=False,
    )


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
    """Medians over `repeats` passes of the measured steps, after `warmup` steps; then the phase split."""
    no_clock: Clock = lambda phase: None  # noqa: E731
    for step in steps[:warmup]:
        run_step(step, no_clock)
    measured = steps[warmup:]
    _sync(device)
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for step in measured:
            run_step(step, no_clock)
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
    out = {"cpu": cpu, "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _step_fn(
    name: str, args: ModelArgs, cfg: TrainConfig, device, precision: str, opts
) -> Callable[[Step, Clock], torch.Tensor]:
    """A fresh model (same seed: same weights for both methods) and optimizer, and its step."""
    model = build_model(args, seed=opts.seed, device=device).train()
    if name == "baseline":
        optimizer = baseline_optimizer(model, cfg)
        return lambda step, clock: baseline_step(model, optimizer, step, device, clock)
    set_trainable(model, cfg)
    model.backbone.checkpoint_layers = model.decoder.checkpoint_layers = cfg.activation_checkpointing
    optimizer = build_optimizer(model, cfg)
    forward = torch.compile(model) if cfg.compile else model
    return lambda step, clock: our_step(model, optimizer, step, device, precision, forward, clock)


def run(opts: argparse.Namespace) -> dict:
    device = torch.device(opts.device)
    args = MODEL_CONFIGS[opts.model]
    precision = opts.precision or ("bf16" if device.type == "cuda" else "fp32")
    rows_per_step = opts.rows_per_step or opts.rows
    accum = max(1, rows_per_step // opts.rows)
    packer = Packer(max_rows=min(opts.max_rows, opts.rows), rows_per_batch=opts.rows, pad_multiple=opts.pad_multiple)
    n_batches = (opts.warmup + opts.steps) * accum
    if opts.data:
        it = iter(TrainLoader(opts.data, packer, seed=opts.seed, num_workers=0))
        batches = [next(it) for _ in range(n_batches)]
    else:
        # ~1.3x the samples the steps need: the pool's sparse last batches are left unused.
        per_batch = max(1, opts.rows // 150)
        batches = synthetic_batches(int(n_batches * per_batch * 1.3) + 8, args, packer, opts.seed)[:n_batches]
    steps = make_steps(batches, accum, args, opts.seed, opts.baseline_batch)
    if len(steps) < opts.warmup + opts.steps:
        raise SystemExit(f"only {len(steps)} steps of data for --warmup {opts.warmup} + --steps {opts.steps}")
    cfg = TrainConfig(activation_checkpointing=opts.activation_checkpointing, compile=opts.compile)

    results = {}
    for name in ("ours", "baseline"):
        _reset_peak_memory(device)
        run_step = _step_fn(name, args, cfg, device, precision, opts)
        results[name] = measure(run_step, steps, opts.warmup, opts.repeats, device) | _peak_memory(device)
        del run_step  # frees the model and optimizer state before the next method's peak is taken

    peak = peak_flops(device, opts.peak_flops)
    for r in results.values():
        r["mfu"] = r["model_flops_per_s"] / peak if peak else None
    measured = steps[opts.warmup :]
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}
        | {"precision": precision, "accum": accum, "rows_per_step": rows_per_step},
        "machine": machine(device),
        "data": {
            "samples_per_step": statistics.mean(s.samples for s in measured),
            "frames_per_step": statistics.mean(s.frames for s in measured),
            "decoder_frames_per_step": statistics.mean(s.decoder_frames for s in measured),
        },
        "peak_flops": peak,
        "mfu_formula": MFU_FORMULA,
        "results": results,
        "ratio_frames_per_s": results["ours"]["frames_per_s"] / results["baseline"]["frames_per_s"],
    }


def print_table(report: dict) -> None:
    r, cfg = report["results"], report["config"]
    table = Table(
        title=f"{cfg['model']} on {report['machine'].get('gpu', report['machine']['cpu'])}, "
        f"{cfg['rows']} rows/micro-batch, {cfg['rows_per_step']} rows/step"
    )
    table.add_column("")
    for name in r:
        table.add_column(name, justify="right")
    mib = lambda key: [f"{v[key]:,.0f}" if key in v else "-" for v in r.values()]  # noqa: E731
    lines = [
        ("audio frames/s", [f"{v['frames_per_s']:,.0f}" for v in r.values()]),
        ("backbone positions/s", [f"{v['backbone_positions_per_s']:,.0f}" for v in r.values()]),
        ("optimizer steps/s", [f"{v['optimizer_steps_per_s']:.3f}" for v in r.values()]),
        ("MFU", [f"{v['mfu']:.1%}" if v["mfu"] is not None else "n/a" for v in r.values()]),
        *[
            (f"{p} ms/step", [f"{v['phase_ms_median'][p]:,.1f}" for v in r.values()])
            for p in ("forward", "backward", "optimizer")
        ],
        ("peak RSS MiB", mib("peak_rss_mib")),
        ("CUDA max allocated MiB", mib("cuda_max_allocated_mib")),
        ("CUDA max reserved MiB", mib("cuda_max_reserved_mib")),
    ]
    for label, cells in lines:
        table.add_row(label, *cells)
    console = Console()
    console.print(table)
    console.print(f"ours / baseline frames/s: [bold]{report['ratio_frames_per_s']:.2f}x[/bold]")
    console.print(f"[dim]{report['mfu_formula']}; peak = {report['peak_flops'] or 'n/a (pass --peak-flops)'}[/dim]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=2048, help="rows per micro-batch (B*S budget of one forward)")
    p.add_argument("--rows-per-step", type=int, help="rows per optimizer step (default: --rows, no accumulation)")
    p.add_argument("--max-rows", type=int, default=2048, help="rows of one packed sequence (data.max_rows)")
    p.add_argument("--pad-multiple", type=int, default=64)
    p.add_argument("--precision", choices=("bf16", "fp32"), help="ours (default: bf16 on CUDA, fp32 on CPU)")
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    report = run(opts)
    print_table(report)
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
