"""The Optuna study a sweep's workers share: its storage, sampler and pruner, and its trial count.

Storage: a journal file in the sweep directory by default (many processes on one machine, appends
under a file lock), or an RDB URL for several machines. Never SQLite: its database-wide write lock
times out under parallel workers and trials are lost ("database is locked").

Interrupted trials (a killed sweep leaves them RUNNING) are marked FAIL and their parameters queued
again. With the journal file nothing else can be running when a sweep starts, so that happens at
start; with an RDB other machines may be mid-trial, so Optuna's heartbeats find the dead ones.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from csm_adapt.config.objective import Objective
from csm_adapt.config.sweep import SweepConfig
from csm_adapt.errors import ConfigError

JOURNAL = "journal.log"
FAIL_REASON = "fail_reason"  # user attr of a trial that failed by itself (OOM, NaN): counts as run
INTERRUPTED = "interrupted"  # user attr of a trial a killed sweep left behind: re-tried, not counted
HEARTBEAT_S = 60  # RDB: a RUNNING trial without a heartbeat for GRACE_S is dead
GRACE_S = 180


def open_storage(url: str | None, sweep_dir: Path) -> optuna.storages.BaseStorage:
    if url is None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))
    if url.startswith("sqlite"):
        raise ConfigError(
            f"--storage {url}: SQLite cannot be shared by parallel sweep workers (its single write lock "
            "times out and trials are lost). Leave --storage out for the journal file (one machine), "
            "or give a PostgreSQL/MySQL URL (several machines)"
        )
    try:
        with warnings.catch_warnings():
            # Heartbeats are marked experimental, yet they are Optuna's one way to find dead trials in an RDB.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(max_retry=None)
            return RDBStorage(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, heartbeat_stale_trial_callback=retry
            )
    except (ImportError, ModuleNotFoundError) as e:
        raise ConfigError(
            f"--storage {url}: the database driver is missing ({e}); for PostgreSQL: pip install 'psycopg[binary]'"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:  # a malformed URL, an unreachable server
        raise ConfigError(f"--storage {url}: cannot open the database: {e}") from None


def open_study(
    sweep: SweepConfig, storage: optuna.storages.BaseStorage, study_name: str, seed: int | None = None
) -> optuna.Study:
    """Create the study, or load it when it exists (a resumed sweep, or another worker).

    `seed`: the sampler's, when not sweep.sampler.seed (each worker needs its own, see runner.py).
    """
    # Optuna logs "A new study created ..." and each trial at INFO level, between our own lines.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = sweep.sampler
    seed = s.seed if seed is None else seed
    if s.name == "tpe":
        multivariate = True if s.multivariate is None else s.multivariate
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=multivariate)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    pruner = {
        "median": optuna.pruners.MedianPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }[sweep.pruner.name](**sweep.pruner.options())
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="minimize" if Objective.parse(sweep.objective).direction == "min" else "maximize",
        load_if_exists=True,
    )


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Journal storage, before any worker starts: fail the trials a killed sweep left RUNNING and
    queue their parameters again. Returns their numbers."""
    interrupted = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in interrupted:
        optuna.Trial(study, t._trial_id).set_user_attr(
            INTERRUPTED, "the sweep was stopped during this trial; its parameters are re-tried"
        )
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, skip_if_exists=False)
    return [t.number for t in interrupted]


def counts_toward_total(t: FrozenTrial) -> bool:
    """Run or running: interrupted trials (re-tried) and queued ones do not use up `--trials`."""
    if t.state == TrialState.FAIL:
        return FAIL_REASON in t.user_attrs
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def trials_left(study: optuna.Study, total: int) -> int:
    return total - sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False))
