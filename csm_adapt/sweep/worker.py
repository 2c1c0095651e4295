"""One sweep worker process: runs trials of the shared study until the sweep has its trials.

Started by `sweep.workers.launch` as `python -m csm_adapt.sweep.worker JOB_JSON`; its device is
chosen through the environment it is started with (CUDA_VISIBLE_DEVICES, thread counts).
Each trial is an ordinary training run of the engine in `<sweep_dir>/trial-NNNN/`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import attrs
import optuna
import torch

from csm_adapt.config.objective import Objective
from csm_adapt.config.recipe import load_recipe, save_recipe
from csm_adapt.config.sweep import SweepConfig
from csm_adapt.errors import CsmAdaptError
from csm_adapt.sweep.space import as_overrides, literal, suggest
from csm_adapt.sweep.study import FAIL_REASON, open_storage, open_study, trials_left
from csm_adapt.training.loop import train

# What a failed trial may raise without stopping the sweep: the engine's own errors (NaN loss,
# OOM in the training step, bad values) and an OOM anywhere else.
TRIAL_ERRORS = (CsmAdaptError, torch.OutOfMemoryError)


@attrs.frozen(kw_only=True)
class Job:
    """What a worker needs, passed as JSON on its command line."""

    recipe: str
    overrides: tuple[str, ...]
    storage: str | None
    study_name: str
    sweep_dir: str
    trials: int
    seed: int = 0  # the sampler's
    threads: int = 0  # CPU: torch threads (0: torch's default)
    memory_fraction: float = 1.0  # CUDA: the share of the GPU's memory this worker may use

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        return cls(**{**data, "overrides": tuple(data["overrides"])})


def trial_dir(sweep_dir: Path, number: int) -> Path:
    return sweep_dir / f"trial-{number:04d}"


def run_trial(trial: optuna.Trial, job: Job, sweep: SweepConfig) -> float:
    """Train with the trial's values; report each measurement of the objective (a validation or an
    evaluation) to the pruner; the best value it reached."""
    recipe_path = Path(job.recipe)
    values = suggest(trial, sweep.params)
    run_dir = trial_dir(Path(job.sweep_dir), trial.number)
    budget = [f"train.steps={sweep.steps}"] if sweep.steps else []
    overrides = [*job.overrides, *as_overrides(values), *budget, f"output.run_dir={literal(str(run_dir))}"]
    trial.set_user_attr("run_dir", str(run_dir))
    objective = Objective.parse(sweep.objective)
    best = None

    def report(step: int, metrics: dict) -> None:
        nonlocal best
        if objective.name not in metrics:  # a validation, when the objective is an eval metric, or vice versa
            return
        value = metrics[objective.name]
        if objective.better(value, best):
            best = value
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"{objective.name} {value:.4f} at step {step}")

    try:
        recipe = attrs.evolve(load_recipe(recipe_path, overrides), sweep=None)
        save_recipe(recipe)
        train(recipe, on_validation=report)
    except TRIAL_ERRORS as e:
        trial.set_user_attr(FAIL_REASON, f"{type(e).__name__}: {e}")
        raise
    if best is None:  # never measured: the worst possible score
        return math.inf if objective.direction == "min" else -math.inf
    return best


def work(job: Job) -> None:
    if job.threads:
        torch.set_num_threads(job.threads)
    if job.memory_fraction < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(job.memory_fraction)
    sweep = load_recipe(Path(job.recipe), job.overrides).sweep
    study = open_study(sweep, open_storage(job.storage, Path(job.sweep_dir)), job.study_name, job.seed)
    # One trial at a time, re-counting before each: other workers (and machines) share the total.
    while trials_left(study, job.trials) > 0:
        # gc: a pruned trial's traceback holds the model in reference cycles; free its (GPU) memory now.
        study.optimize(lambda trial: run_trial(trial, job, sweep), n_trials=1, catch=TRIAL_ERRORS, gc_after_trial=True)


if __name__ == "__main__":
    work(Job.from_json(sys.argv[1]))
