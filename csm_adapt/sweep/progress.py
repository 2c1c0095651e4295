"""What a sweep prints while it runs: each finished trial as one line, and a periodic status with
the running trials' latest validation and an ETA for the whole study."""

from __future__ import annotations

import datetime
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from csm_adapt.sweep.study import FAIL_REASON


def format_params(params: dict) -> str:
    """`train.lr=0.000123, train.schedule=cosine`: short numbers, no Python dict syntax."""
    return ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in params.items()
    )


def trial_line(trial: FrozenTrial, objective: str) -> str:
    value = "" if trial.value is None else f" {objective}={trial.value:.4f}"
    reason = trial.user_attrs.get(FAIL_REASON)
    why = f" ({reason})" if reason and trial.state == TrialState.FAIL else ""
    return f"trial {trial.number}: {trial.state.name.lower()}{value}{why}  {format_params(trial.params)}"


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def status_line(study: optuna.Study, total: int, workers: int, objective: str, now: float | None = None) -> str:
    """`3/20 trials finished, 2 running (trial 3: step 200 val/loss=2.3100, 0:04:10; ...); about 0:41:00 left`."""
    now = time.time() if now is None else now
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished() and t.state != TrialState.FAIL]
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    parts = []
    for t in running:
        elapsed = _duration(now - t.datetime_start.timestamp()) if t.datetime_start else "?"
        if t.intermediate_values:
            step = max(t.intermediate_values)
            parts.append(f"trial {t.number}: step {step} {objective}={t.intermediate_values[step]:.4f}, {elapsed}")
        else:
            parts.append(f"trial {t.number}: {elapsed}, not validated yet")
    line = f"{done}/{total} trials finished, {len(running)} running"
    if parts:
        line += f" ({'; '.join(parts)})"
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished if t.datetime_complete]
    if durations and done < total:
        left = sum(durations) / len(durations) * (total - done) / max(1, workers)
        line += f"; about {_duration(left)} left"
    return line
