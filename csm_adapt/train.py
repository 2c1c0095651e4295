"""The training loop: a recipe in, checkpoints, metrics and audio samples out.

Read top to bottom: set up (device, model, optimizer, data, plugins), maybe resume, then per
optimizer step: draw the micro-batches of the step, forward/backward each with the loss normalised
over the whole global step, clip, step; log, validate, generate samples and checkpoint on schedule.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Callable

import attrs
import torch

from . import parallel
from .checkpoint import build_model, load_model
from .distributed import Dist, all_reduce_sum, init_distributed, pick_device
from .errors import CsmAdaptError
from .loader import TrainLoader, ValLoader
from .losses import codebook_accuracy, loss_parts
from .model.config import MODEL_CONFIGS
from .optim import build_optimizer, build_scheduler, set_trainable
from .packing import Packer
from .plugin_api import LossParts, RunInfo
from .recipe import recipe_to_dict, recipe_to_toml
from .recipe_schema import Recipe
from .run_checkpoints import checkpoints_dir, latest_step_dir, load_trainer_state, save_model_dir, save_step
from .samples import SampleWriter

# Validation scores every frame with this fixed weighting, so that the tuned `decoder_loss_weight`
# cannot make a model look better (reference §3).
VAL_DECODER_WEIGHT = 0.5


class TrainingError(CsmAdaptError):
    pass


@attrs.define
class Totals:
    """Running sums between two log lines, kept on the device so the hot loop never syncs."""

    c0_ce: torch.Tensor
    decoder_ce: torch.Tensor
    c0_frames: torch.Tensor
    decoder_frames: torch.Tensor
    correct: torch.Tensor  # [K] top-1 hits per codebook
    rows: int = 0
    steps: int = 0

    @classmethod
    def zeros(cls, k: int, device) -> Totals:
        z = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        return cls(z(()), z(()), z(()), z(()), z(k))

    def add(self, out, parts: LossParts) -> None:
        self.c0_ce += parts.c0.detach() * parts.c0_frames
        self.decoder_ce += parts.decoder.detach() * parts.decoder_frames
        self.c0_frames += parts.c0_frames
        self.decoder_frames += parts.decoder_frames
        acc = codebook_accuracy(out)
        self.correct[0] += acc[0] * parts.c0_frames
        self.correct[1:] += acc[1:] * parts.decoder_frames

    def metrics(self, prefix: str, d: Dist) -> dict[str, float]:
        packed = torch.cat(
            [torch.stack([self.c0_ce, self.decoder_ce, self.c0_frames, self.decoder_frames]), self.correct]
        )
        c0_ce, dec_ce, c0_n, dec_n, *correct = all_reduce_sum(packed.float(), d).tolist()
        c0, dec = c0_ce / max(c0_n, 1), dec_ce / max(dec_n, 1)
        out = {f"{prefix}/loss_c0": c0, f"{prefix}/loss_decoder": dec}
        out.update(
            {f"{prefix}/acc/c{i:02d}": hits / max(c0_n if i == 0 else dec_n, 1) for i, hits in enumerate(correct)}
        )
        return out


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _forward(model, batch, decoder_mask):
    return model(
        batch.tokens, batch.mask, batch.target_mask, input_pos=batch.input_pos, doc_ids=batch.doc_ids,
        decoder_mask=decoder_mask,
    )  # fmt: skip


@torch.no_grad()
def validate(model, val_loader: ValLoader, device, precision: str, d: Dist) -> dict[str, float]:
    """Every val frame scored by codebook 0 and the decoder; every rank reads the whole split."""
    model.eval()
    totals = Totals.zeros(model.num_codebooks, device)
    for batch in val_loader:
        with _autocast(device, precision):
            out = _forward(model, batch.to(device), None)
        totals.add(out, loss_parts(out))
    model.train()
    metrics = totals.metrics("val", Dist())  # identical on every rank: no reduction
    metrics["val/loss"] = (1 - VAL_DECODER_WEIGHT) * metrics["val/loss_c0"] + VAL_DECODER_WEIGHT * metrics[
        "val/loss_decoder"
    ]
    return metrics


def _build_model(recipe: Recipe, device) -> torch.nn.Module:
    m = recipe.model
    if not m.checkpoint:
        return build_model(m.config, seed=recipe.train.seed, device=device)
    model = load_model(m.checkpoint, device=device)
    if model.args != MODEL_CONFIGS[m.config]:
        # The recipe's `config` documents the shape; a checkpoint of another shape is a recipe error.
        raise TrainingError(f"model.checkpoint {m.checkpoint} holds {model.args}, but model.config is {m.config!r}")
    return model


def train(recipe: Recipe, *, resume: bool = False, on_validation: Callable[[int, dict], None] | None = None) -> Path:
    """Run the recipe's training; returns the final checkpoint directory.

    `on_validation(step, metrics)` is called after each validation (a sweep reports to its pruner
    there; an exception it raises stops the run).
    """
    cfg = recipe.train
    run_dir = Path(recipe.output.run_dir)
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    d = init_distributed(device)
    torch.manual_seed(cfg.seed)

    # Model, what trains, optimizer, schedule.
    model = _build_model(recipe, device)
    set_trainable(model, cfg)
    model.backbone.checkpoint_layers = model.decoder.checkpoint_layers = cfg.activation_checkpointing
    model.train()
    wrapped = parallel.wrap(model, cfg.parallel, d, device)
    optimizer = build_optimizer(wrapped, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    step_fn = torch.compile(wrapped) if cfg.compile else wrapped
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # Data: micro-batches of `rows_per_micro_batch` rows; enough of them per step to reach `rows_per_step`.
    packer = Packer(
        max_rows=recipe.data.max_rows, rows_per_batch=cfg.rows_per_micro_batch, pad_multiple=cfg.pad_multiple
    )
    train_loader = TrainLoader(
        recipe.data.out, packer, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, pack_buffer=cfg.pack_buffer,
        num_workers=cfg.num_workers, rank=d.rank, world_size=d.world_size, pin_memory=device.type == "cuda",
    )  # fmt: skip
    val_loader = ValLoader(recipe.data.out, packer, pack_buffer=cfg.pack_buffer)
    accum = max(1, cfg.rows_per_step // (cfg.rows_per_micro_batch * d.world_size))

    strategy = recipe.loss.create()
    # Decoder-frame draws: a generator of their own (per rank), saved with checkpoints for exact resume.
    frame_gen = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank)

    frontend = (recipe.model.text_tokenizer, recipe.model.audio_codec)
    samples = SampleWriter(recipe, model, device, run_dir, d.is_main) if recipe.samples.prompts else None

    start, best_val = 0, math.inf
    if resume:
        start, best_val = _resume(run_dir, wrapped, optimizer, scheduler, scaler, train_loader, frame_gen, d)
    with _open_loggers(recipe, run_dir, d) as loggers:
        for logger in loggers:
            logger.begin(
                RunInfo(
                    total_steps=cfg.steps,
                    start_step=start,
                    recipe=recipe_to_dict(recipe),
                    recipe_toml=recipe_to_toml(recipe),
                )
            )

        batches = iter(train_loader)
        totals = Totals.zeros(model.num_codebooks, device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        last_log, paused, last_good = time.perf_counter(), 0.0, latest_step_dir(run_dir)
        for step in range(start, cfg.steps):
            micro = [next(batches) for _ in range(accum)]
            # Drawn on the CPU copy: reproducible on any device, and no device sync to count them.
            decoder_masks = [strategy.select_decoder_frames(b.target_mask, frame_gen) for b in micro]
            # The loss is a mean over every frame of the global step, whichever rank/micro-batch holds it.
            counts = torch.tensor(
                [sum(b.num_frames for b in micro), sum(int(m.sum()) for m in decoder_masks)], device=device
            )
            n_c0, n_dec = all_reduce_sum(counts.float(), d).clamp(min=1).unbind()
            try:
                for i, (batch, dmask) in enumerate(zip(micro, decoder_masks)):
                    # DDP: all-reduce gradients only on the step's last micro-batch.
                    no_sync = i < accum - 1 and isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
                    with wrapped.no_sync() if no_sync else contextlib.nullcontext():
                        with _autocast(device, cfg.precision):
                            out = _forward(step_fn, batch.to(device), dmask.to(device, non_blocking=True))
                            parts = loss_parts(out)
                            global_parts = LossParts(
                                c0=parts.c0 * parts.c0_frames / n_c0, decoder=parts.decoder * parts.decoder_frames / n_dec,
                                c0_frames=parts.c0_frames, decoder_frames=parts.decoder_frames,
                            )  # fmt: skip
                            # DDP averages gradients over ranks; the loss is already a global mean.
                            loss = strategy.combine(global_parts) * d.world_size
                        scaler.scale(loss).backward()
                    nonfinite |= ~torch.isfinite(loss.detach())
                    totals.add(out, parts)
                    totals.rows += batch.num_rows
            except torch.OutOfMemoryError:
                raise TrainingError(
                    f"out of memory at step {step + 1} with train.rows_per_micro_batch={cfg.rows_per_micro_batch}: "
                    "lower it (train.rows_per_step keeps the optimizer batch), or set train.activation_checkpointing=true"
                ) from None
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in wrapped.parameters() if p.requires_grad], cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            )
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            totals.steps += 1
            done = step + 1

            due = lambda every: done % every == 0 or done == cfg.steps  # noqa: E731
            if due(cfg.log_every) or due(cfg.checkpoint_every) or due(cfg.val_every):
                # The one host sync of the loop: only on steps that log, validate or save anything.
                if bool(all_reduce_sum(nonfinite.float(), d) > 0):
                    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved yet"
                    raise TrainingError(
                        f"non-finite loss or gradients by step {done}; stopped, {where}. Lower train.lr, or use bf16 instead of fp16"
                    )
            if due(cfg.log_every):
                now = time.perf_counter()
                metrics = totals.metrics("train", d)
                frames = float(all_reduce_sum(totals.c0_frames.clone(), d))
                rows = float(all_reduce_sum(torch.tensor(float(totals.rows), device=device), d))
                # The strategy's own weighting of the interval's mean parts: the loss being optimised.
                interval = LossParts(
                    torch.tensor(metrics["train/loss_c0"]), torch.tensor(metrics["train/loss_decoder"]), 0, 0
                )
                metrics.update({
                    "train/loss": float(strategy.combine(interval)),
                    "train/lr": lr, "train/grad_norm": float(grad_norm),
                    "train/frames_per_s": frames / (now - last_log - paused), "train/tokens_per_s": rows / (now - last_log - paused),
                })  # fmt: skip
                for logger in loggers:
                    logger.log_scalars(done, metrics)
                totals, last_log, paused = Totals.zeros(model.num_codebooks, device), time.perf_counter(), 0.0
            # Validation, samples and checkpoints are not training time: keep them out of frames/s.
            pause_start = time.perf_counter()
            if due(cfg.val_every):
                metrics = validate(parallel.unwrap(wrapped), val_loader, device, cfg.precision, d)
                for logger in loggers:
                    logger.log_scalars(done, metrics)
                if on_validation is not None:
                    on_validation(done, metrics)
                if metrics["val/loss"] < best_val:
                    best_val = metrics["val/loss"]
                    full = parallel.full_model(wrapped)
                    if d.is_main:
                        save_model_dir(
                            checkpoints_dir(run_dir) / "best", full, frontend, {"step": done, "val_loss": best_val}
                        )
            if samples and (due(recipe.samples.every)):
                samples.write(done, loggers)
            if due(cfg.checkpoint_every):
                state = {
                    "step": done, "best_val": best_val,
                    "optimizer": parallel.full_optimizer_state(wrapped, optimizer), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
                    "ranks": _gather({"loader": train_loader.state_dict(), "frame_gen": frame_gen.get_state()}, d),
                }  # fmt: skip
                full = parallel.full_model(wrapped)
                if d.is_main:
                    last_good = save_step(run_dir, done, full, frontend, state, cfg.keep_last)
            paused += time.perf_counter() - pause_start

        final = checkpoints_dir(run_dir) / "final"
        full = parallel.full_model(wrapped)
        if d.is_main:
            save_model_dir(final, full, frontend)
        for logger in loggers:
            logger.log_hparams(recipe_to_dict(recipe), {"best_val_loss": best_val})
        return final


@contextlib.contextmanager
def _open_loggers(recipe: Recipe, run_dir: Path, d: Dist):
    """The recipe's loggers on rank 0 (none elsewhere), closed however the run ends."""
    loggers = [ref.create(run_dir) for ref in recipe.loggers] if d.is_main else []
    try:
        yield loggers
    finally:
        for logger in loggers:
            logger.close()


def _gather(obj, d: Dist) -> list:
    """Each rank's `obj`, in rank order (data position and frame draws are per rank)."""
    if not d.enabled:
        return [obj]
    objs: list = [None] * d.world_size
    torch.distributed.all_gather_object(objs, obj)
    return objs


def _resume(run_dir, wrapped, optimizer, scheduler, scaler, loader, frame_gen, d: Dist) -> tuple[int, float]:
    step_dir = latest_step_dir(run_dir)
    if step_dir is None:
        raise TrainingError(f"--resume: no complete checkpoint under {checkpoints_dir(run_dir)}")
    state = load_trainer_state(step_dir)
    weights = load_model(step_dir).state_dict()
    parallel.load_full_state(wrapped, optimizer, weights, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if len(state["ranks"]) != d.world_size:
        raise TrainingError(f"{step_dir} was saved by {len(state['ranks'])} rank(s); resume with the same number")
    loader.load_state_dict(state["ranks"][d.rank]["loader"])
    frame_gen.set_state(state["ranks"][d.rank]["frame_gen"])
    torch.set_rng_state(state["rng_cpu"])
    return state["step"], state["best_val"]
