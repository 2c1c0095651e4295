"""A hyperparameter sweep, top to bottom: check the search space, prepare the data once, open (or
resume) the study, run the workers until the study has its trials, report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from csm_adapt.config.recipe import load_recipe
from csm_adapt.config.schema import Recipe
from csm_adapt.data.prepare import prepare
from csm_adapt.errors import ConfigError, CsmAdaptError
from csm_adapt.files import DirLock
from csm_adapt.sweep.launcher import launch, plan_slots, visible_gpus, wait
from csm_adapt.sweep.progress import status_line, trial_line
from csm_adapt.sweep.report import report
from csm_adapt.sweep.space import check_space
from csm_adapt.sweep.study import open_storage, open_study, retry_interrupted
from csm_adapt.sweep.worker import Job
from csm_adapt.terminal import make_console


def sweep_dir(recipe: Recipe) -> Path:
    return recipe.sweep.dir or Path(f"{recipe.output.run_dir}-sweep")


def study_name(recipe: Recipe) -> str:
    return recipe.sweep.study_name or recipe.output.run_dir.name


STATUS_EVERY_S = 60.0  # a status line (running trials, ETA) this often while trials run


def run_sweep(
    recipe_path: Path, overrides: Sequence[str], *, trials: int | None = None, workers: int | None = None,
    workers_per_gpu: int = 1, storage: str | None = None, console: Console | None = None,
) -> Path | None:  # fmt: skip
    """Run (or resume) the sweep of `recipe_path`'s [sweep] table; returns best.toml's path."""
    console = console or make_console()
    recipe = load_recipe(recipe_path, overrides)
    if recipe.sweep is None:
        raise ConfigError(f"{recipe_path}: no [sweep] table: nothing to search (see the sweep section of the README)")
    check_space(recipe_path, overrides, recipe.sweep)
    out = sweep_dir(recipe)
    # One sweep process per sweep directory (its journal, logs and reports). With an RDB storage,
    # other machines' sweeps share the study, each with its own directory.
    with DirLock(out, "csm-adapt sweep"):
        return _run(recipe, recipe_path, overrides, out, trials, workers, workers_per_gpu, storage, console)


def _run(recipe, recipe_path, overrides, out, trials, workers, workers_per_gpu, storage, console) -> Path | None:
    # Shards first, once: every trial reads the same data.out.
    prepare(recipe.data, recipe.model, console=console)

    gpus = visible_gpus()
    slots = plan_slots(workers or max(1, len(gpus) * workers_per_gpu), workers_per_gpu, gpus, os.cpu_count() or 1)
    study = open_study(recipe.sweep, open_storage(storage, out), study_name(recipe))
    if storage is None:
        retried = retry_interrupted(study)
        if retried:
            console.print(
                f"[yellow]trials {', '.join(map(str, retried))} were interrupted: "
                "marked failed, their parameters queued again"
            )
    total = trials or recipe.sweep.trials
    console.print(
        f"sweep {study.study_name}: {total} trials, {len(slots)} worker(s) on {'GPU' if gpus else 'CPU'}, in {out}"
    )

    # Samplers seeded alike would draw the same points: each worker gets its own seed, and a resumed
    # sweep new ones (TPE's first trials and the random sampler would otherwise repeat earlier draws).
    seed = recipe.sweep.sampler.seed + 1000 * len(study.get_trials(deepcopy=False))
    job = Job(recipe=str(recipe_path.absolute()), overrides=tuple(overrides), storage=storage,
              study_name=study.study_name, sweep_dir=str(out), trials=total, seed=seed)  # fmt: skip
    seen: set[int] = set()
    last_status = [time.monotonic()]

    def print_progress() -> None:
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and t.number not in seen:
                seen.add(t.number)
                console.print(trial_line(t, recipe.sweep.objective), markup=False, highlight=False)
        if time.monotonic() - last_status[0] >= STATUS_EVERY_S:
            last_status[0] = time.monotonic()
            console.print(status_line(study, total, len(slots), recipe.sweep.objective), markup=False, highlight=False)

    print_progress()  # what a resumed sweep already has
    console.print(f"worker logs: {out / 'logs'}/worker-N.log (N = 0..{len(slots) - 1})", markup=False)
    codes = wait(launch(job, slots, out / "logs"), print_progress)
    best = report(study, recipe_path, overrides, recipe, out, console)
    failed = [i for i, code in enumerate(codes) if code != 0]
    if failed:
        logs = ", ".join(str(out / "logs" / f"worker-{i}.log") for i in failed)
        raise CsmAdaptError(f"sweep worker(s) {failed} stopped with an error; see {logs}")
    return best
