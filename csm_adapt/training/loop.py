"""The training loop: a recipe in, checkpoints, metrics and audio samples out.

Read top to bottom: set up (device, model, optimizer, data, plugins), maybe resume, then per
optimizer step: draw the micro-batches of the step, forward/backward each with the loss normalised
over the whole global step, clip, step; log, validate, generate samples and checkpoint on schedule.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import torch

from csm_adapt.config.objective import Objective
from csm_adapt.config.recipe import SAVED_NAME, changed_settings, recipe_to_dict, recipe_to_toml
from csm_adapt.config.schema import Recipe
from csm_adapt.data.loader import SampleLimits, TrainLoader, ValLoader
from csm_adapt.data.packing import Packer
from csm_adapt.data.storage import open_store
from csm_adapt.errors import CsmAdaptError
from csm_adapt.evaluation.during_training import TrainingEvaluation
from csm_adapt.files import DirLock, reported_writes
from csm_adapt.model.checkpoint import build_model, load_model
from csm_adapt.model.config import MODEL_CONFIGS
from csm_adapt.plugin_api import RunInfo
from csm_adapt.training import parallel
from csm_adapt.training.adapters import decide_trainable, load_weights
from csm_adapt.training.distributed import Dist, all_reduce_sum, init_distributed, pick_device
from csm_adapt.training.loggers import LoggerFanOut
from csm_adapt.training.losses import loss_parts
from csm_adapt.training.optim import build_optimizer, build_scheduler
from csm_adapt.training.precision import resolve_precision
from csm_adapt.training.run_checkpoints import (
    checkpoints_dir,
    latest_step_dir,
    load_trainer_state,
    save_model_dir,
    save_step,
)
from csm_adapt.training.samples import SampleWriter
from csm_adapt.training.step import Totals, autocast, backward_step, forward_batch, optimizer_step
from csm_adapt.training.throughput import Throughput
from csm_adapt.training.trainer_state import TrainerState

# Validation scores every frame with this fixed weighting, so that the tuned `decoder_loss_weight`
# cannot make a model look better (docs/architecture.md, "The objective").
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
    metrics, _, _ = totals.reduce("val", Dist())  # identical on every rank: no reduction
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

    `on_validation(step, metrics)` is called after each validation and evaluation, with the step's
    `val/*` and `eval/*` metrics (a sweep reports to its pruner there; an exception it raises stops
    the run).
    """
    run_dir = Path(recipe.output.run_dir)
    resume_command = f"csm-adapt run {run_dir / SAVED_NAME} --resume"
    with claim_run_dir(run_dir, resume), reported_writes(run_dir, lambda: _kept(run_dir), resume_command):
        return _train(recipe, resume, on_validation)


def _kept(run_dir: Path) -> str:
    """What a failed write leaves usable, for its message."""
    last = latest_step_dir(run_dir)
    if last is None:
        return "No checkpoint was saved yet"
    return f"The checkpoints saved before are intact; the newest is {last}"


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, resume: bool) -> Iterator[None]:
    """Hold the run directory for this run (an OS lock, on the main rank), once every reason to
    refuse the run has been checked: call it before writing anything there."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with DirLock(Path(run_dir), "csm-adapt run"):
        _refuse_to_mix_runs(Path(run_dir), resume)
        yield


def _train(recipe: Recipe, resume: bool, on_validation: Callable[[int, dict], None] | None) -> Path:
    run_dir = Path(recipe.output.run_dir)
    device = pick_device(recipe.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    # "auto" precision becomes this device's, so that the recipe the loggers record says what trained.
    recipe = attrs.evolve(
        recipe, train=attrs.evolve(recipe.train, precision=resolve_precision(recipe.train.precision, device))
    )
    cfg = recipe.train
    d = init_distributed(device)
    torch.manual_seed(cfg.seed)

    # Model, what trains, optimizer, schedule.
    model = _build_model(recipe, device)
    adapter = decide_trainable(recipe, model, distributed=d.enabled)
    model.backbone.checkpoint_layers = model.decoder.checkpoint_layers = cfg.activation_checkpointing
    model.train()
    wrapped = parallel.wrap(model, cfg.parallel, d)
    optimizer = build_optimizer(wrapped, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    forward = torch.compile(wrapped) if cfg.compile else wrapped
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # Data: micro-batches of `rows_per_micro_batch` rows; enough of them per step to reach `rows_per_step`.
    packer = Packer(
        max_rows=recipe.data.max_rows, rows_per_batch=cfg.rows_per_micro_batch, pad_multiple=cfg.pad_multiple
    )
    checks = {"limits": SampleLimits(text_vocab_size=model.args.text_vocab_size), "on_corrupt": recipe.data.on_corrupt}
    data = open_store(recipe.data.out, recipe.data.storage_options)  # a folder or a URL
    train_loader = TrainLoader(
        data, packer, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, pack_buffer=cfg.pack_buffer,
        num_workers=cfg.num_workers, rank=d.rank, world_size=d.world_size, pin_memory=device.type == "cuda", **checks,
    )  # fmt: skip
    val_loader = ValLoader(data, packer, pack_buffer=cfg.pack_buffer, **checks)
    accum = max(1, cfg.rows_per_step // (cfg.rows_per_micro_batch * d.world_size))

    strategy = recipe.loss.create()
    # Decoder-frame draws: a generator of their own (per rank), saved with checkpoints for exact resume.
    frame_gen = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank)

    frontend = (recipe.model.text_tokenizer, recipe.model.audio_codec)
    samples = SampleWriter(recipe, model, device, run_dir, d.is_main) if recipe.samples.prompts else None
    evaluation = TrainingEvaluation(recipe, model, device) if recipe.eval else None
    state = TrainerState(wrapped, optimizer, scheduler, scaler, train_loader, frame_gen, d)

    # checkpoints/best: the best value of `best_by` so far (kept in trainer.pt as "best_val").
    best_by = Objective.parse(cfg.best_by)
    fresh = (0, math.inf if best_by.direction == "min" else -math.inf)
    start, best_val = _resume(run_dir, state, model if adapter else None) if resume else fresh
    with LoggerFanOut.open(recipe, run_dir, d) as loggers:
        loggers.begin(RunInfo(cfg.steps, start, recipe_to_dict(recipe), recipe_to_toml(recipe)))
        batches = iter(train_loader)
        totals = Totals.zeros(model.num_codebooks, device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        throughput, last_good = Throughput(), latest_step_dir(run_dir)
        for step in range(start, cfg.steps):
            # 1. The step's micro-batches, and which frames of each the depth decoder learns from.
            micro = [next(batches) for _ in range(accum)]
            # Drawn on the CPU copy: reproducible on any device, and no device sync to count them.
            decoder_masks = [strategy.select_decoder_frames(b.target_mask, frame_gen) for b in micro]

            # 2. Forward/backward over them, then the update.
            try:
                loss = backward_step(
                    wrapped, forward, strategy, micro, decoder_masks, totals,
                    device=device, precision=cfg.precision, d=d, scaler=scaler,
                )  # fmt: skip
            except torch.OutOfMemoryError:
                raise TrainingError(
                    f"out of memory at step {step + 1} with train.rows_per_micro_batch={cfg.rows_per_micro_batch}: "
                    "lower it (train.rows_per_step keeps the optimizer batch), "
                    "or set train.activation_checkpointing=true"
                ) from None
            nonfinite |= ~torch.isfinite(loss)
            grad_norm = optimizer_step(wrapped, optimizer, scaler, cfg.grad_clip)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            done = step + 1

            # 3. Stop on a non-finite loss (checked only when something is due: the loop's one host sync).
            if any(_due(done, every, cfg.steps) for every in (cfg.log_every, cfg.checkpoint_every, cfg.val_every)):
                if bool(all_reduce_sum(nonfinite.float(), d) > 0):
                    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved yet"
                    raise TrainingError(
                        f"non-finite loss or gradients by step {done}; stopped, {where}. "
                        "Lower train.lr, or use bf16 instead of fp16"
                    )

            # 4. Log the interval since the last log line.
            if _due(done, cfg.log_every, cfg.steps):
                metrics, frames, rows = totals.reduce("train", d)
                metrics.update({"train/lr": lr, "train/grad_norm": float(grad_norm), **throughput.rates(frames, rows)})
                loggers.log_scalars(done, metrics)
                totals = Totals.zeros(model.num_codebooks, device)

            # 5. Validate, speak, save: not training time, so kept out of frames/s.
            with throughput.paused():
                measured = {}
                if _due(done, cfg.val_every, cfg.steps):
                    measured.update(validate(parallel.unwrap(wrapped), val_loader, device, cfg.precision, d))
                    loggers.log_scalars(done, measured)
                if evaluation and _due(done, recipe.eval.every, cfg.steps):
                    measured.update(evaluation.run(done, loggers))
                if measured and on_validation is not None:
                    on_validation(done, measured)
                if best_by.name in measured and best_by.better(measured[best_by.name], best_val):
                    best_val = measured[best_by.name]
                    full = parallel.full_model(wrapped)
                    if d.is_main:
                        best = {"step": done, "best_by": best_by.name, "value": best_val}
                        save_model_dir(checkpoints_dir(run_dir) / "best", full, frontend, best, adapter)
                if samples and _due(done, recipe.samples.every, cfg.steps):
                    samples.write(done, loggers)
                if _due(done, cfg.checkpoint_every, cfg.steps):
                    trainer_state, full = state.capture(done, best_val), parallel.full_model(wrapped)
                    if d.is_main:
                        last_good = save_step(run_dir, done, full, frontend, trainer_state, cfg.keep_last, adapter)

        final = checkpoints_dir(run_dir) / "final"
        full = parallel.full_model(wrapped)
        if d.is_main:
            save_model_dir(final, full, frontend, adapter=adapter)
        loggers.log_hparams(changed_settings(recipe), {f"best_{best_by.name.replace('/', '_')}": best_val})
        return final


def _due(done: int, every: int, last: int) -> bool:
    """Whether something scheduled `every` steps happens after step `done` (always after the last)."""
    return done % every == 0 or done == last


def _refuse_to_mix_runs(run_dir: Path, resume: bool) -> None:
    if resume and latest_step_dir(run_dir) is None:
        raise TrainingError(f"--resume: no complete checkpoint under {checkpoints_dir(run_dir)}")
    # A run killed before its first step checkpoint left nothing to continue (at most a `best`
    # model, which the new run's first validation replaces): starting over is allowed then.
    existing = latest_step_dir(run_dir) or checkpoints_dir(run_dir) / "final"
    if not resume and existing.is_dir():
        # Starting over would mix two runs' checkpoints, metrics and samples in one directory.
        raise TrainingError(
            f"{run_dir} already holds a run ({existing}); continue it with --resume, or train into another "
            "directory (output.run_dir=...), or delete it first"
        )


def _resume(run_dir: Path, state: TrainerState, adapted) -> tuple[int, float]:
    """Weights and trainer state of the newest step checkpoint; `adapted`: the model when an adapter trains."""
    step_dir = latest_step_dir(run_dir)
    if step_dir is None:
        raise TrainingError(f"--resume: no complete checkpoint under {checkpoints_dir(run_dir)}")
    if adapted is not None:
        load_weights(adapted, step_dir)  # the frozen base is the recipe's, already in place
        return state.restore(step_dir, load_trainer_state(step_dir), None)
    return state.restore(step_dir, load_trainer_state(step_dir), load_model(step_dir).state_dict())
