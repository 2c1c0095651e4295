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

import torch

from . import parallel
from .checkpoint import build_model, load_model
from .distributed import Dist, all_reduce_sum, init_distributed, pick_device
from .errors import CsmAdaptError
from .loader import TrainLoader, ValLoader
from .losses import loss_parts
from .model.config import MODEL_CONFIGS
from .optim import build_optimizer, build_scheduler, set_trainable
from .packing import Packer
from .plugin_api import LossParts, RunInfo
from .recipe import recipe_to_dict, recipe_to_toml
from .recipe_schema import Recipe
from .run_checkpoints import checkpoints_dir, latest_step_dir, load_trainer_state, save_model_dir, save_step
from .samples import SampleWriter
from .train_step import Totals, autocast, backward_step, forward_batch, optimizer_step

# Validation scores every frame with this fixed weighting, so that the tuned `decoder_loss_weight`
# cannot make a model look better (reference §3).
VAL_DECODER_WEIGHT = 0.5


class TrainingError(CsmAdaptError):
    pass


@torch.no_grad()
def validate(model, val_loader: ValLoader, device, precision: str, d: Dist) -> dict[str, float]:
    """Every val frame scored by codebook 0 and the decoder; every rank reads the whole split."""
    model.eval()
    totals = Totals.zeros(model.num_codebooks, device)
    for batch in val_loader:
        with autocast(device, precision):
            out = forward_batch(model, batch, None, device)
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
    existing = checkpoints_dir(run_dir)
    if not resume and existing.is_dir() and any(existing.iterdir()):
        # Starting over would mix two runs' checkpoints, metrics and samples in one directory.
        raise TrainingError(
            f"{run_dir} already holds a run ({existing}); continue it with --resume, or train into another "
            "directory (output.run_dir=...), or delete it first"
        )
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    d = init_distributed(device)
    torch.manual_seed(cfg.seed)

    # Model, what trains, optimizer, schedule.
    model = _build_model(recipe, device)
    set_trainable(model, cfg)
    model.backbone.checkpoint_layers = model.decoder.checkpoint_layers = cfg.activation_checkpointing
    model.train()
    wrapped = parallel.wrap(model, cfg.parallel, d)
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
            try:
                loss = backward_step(
                    wrapped, step_fn, strategy, micro, decoder_masks, totals,
                    device=device, precision=cfg.precision, d=d, scaler=scaler,
                )  # fmt: skip
            except torch.OutOfMemoryError:
                raise TrainingError(
                    f"out of memory at step {step + 1} with train.rows_per_micro_batch={cfg.rows_per_micro_batch}: "
                    "lower it (train.rows_per_step keeps the optimizer batch), or set train.activation_checkpointing=true"
                ) from None
            nonfinite |= ~torch.isfinite(loss)
            grad_norm = optimizer_step(wrapped, optimizer, scaler, cfg.grad_clip)
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
