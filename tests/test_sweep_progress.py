"""What a sweep prints while it runs (issue 14, item 10): readable trial lines, a status with the
running trials and an ETA, and no Optuna log lines."""

from __future__ import annotations

import datetime

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from csm_adapt.sweep.progress import format_params, status_line, trial_line
from csm_adapt.sweep.study import FAIL_REASON

START = datetime.datetime(2026, 1, 1, 12, 0, 0)


def trial(state, minutes, value=None, **kwargs):
    """A finished trial as optuna.create_trial makes it (numbered -1 until a study adds it)."""
    return create_trial(
        state=state,
        value=value,
        params={"train.lr": 0.000123456, "train.schedule": "cosine"},
        distributions={
            "train.lr": FloatDistribution(1e-5, 1e-3, log=True),
            "train.schedule": optuna.distributions.CategoricalDistribution(["cosine", "linear"]),
        },
        **kwargs,
    )


def test_trial_lines_are_readable():
    assert format_params({"train.lr": 0.000123456, "train.warmup_steps": 50, "x": "cosine"}) == (
        "train.lr=0.0001235, train.warmup_steps=50, x=cosine"
    )
    done = trial(TrialState.COMPLETE, 10, value=2.345678)
    assert (
        trial_line(done, "val/loss") == "trial -1: complete val/loss=2.3457  train.lr=0.0001235, train.schedule=cosine"
    )
    failed = trial(TrialState.FAIL, 1, user_attrs={FAIL_REASON: "out of memory"})
    assert trial_line(failed, "val/loss").startswith("trial -1: fail (out of memory)  train.lr=")


def test_status_shows_running_trials_and_an_eta():
    study = optuna.create_study()
    for minutes in (10, 20):
        t = trial(TrialState.COMPLETE, minutes, value=2.0)
        t.datetime_start, t.datetime_complete = START, START + datetime.timedelta(minutes=minutes)
        study.add_trial(t)
    running = study.ask()  # trial 2, started now
    running.report(2.3456, step=200)
    study.ask()  # trial 3: not validated yet
    now = running._cached_frozen_trial.datetime_start.timestamp() + 125
    line = status_line(study, total=8, workers=2, objective="val/loss", now=now)
    assert line.startswith("2/8 trials finished, 2 running (trial 2: step 200 val/loss=2.3456, 0:02:05; trial 3: ")
    assert line.endswith("not validated yet); about 0:45:00 left")  # 15 min a trial x 6 left / 2 workers


def test_opening_a_study_silences_optuna_info_logs(tmp_path):
    from csm_adapt.config.sweep import Param, SweepConfig
    from csm_adapt.sweep.study import open_storage, open_study

    optuna.logging.set_verbosity(optuna.logging.INFO)
    sweep = SweepConfig(params={"train.lr": Param(type="float", low=1e-5, high=1e-3)})
    open_study(sweep, open_storage(None, tmp_path), "quiet")
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING
