"""Sweeps on the offline demo data: parallel CPU workers, pruning, best.toml, resume, bad search spaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState
from rich.console import Console

from csm_adapt.cli import cli
from csm_adapt.config import toml_io
from csm_adapt.config.recipe import load_recipe
from csm_adapt.data.prepare import prepare
from csm_adapt.errors import ConfigError, CsmAdaptError
from csm_adapt.sweep.launcher import plan_slots
from csm_adapt.sweep.report import BEST, PLOTS, TENSORBOARD, TRIALS_CSV
from csm_adapt.sweep.runner import run_sweep, study_name, sweep_dir
from csm_adapt.sweep.space import check_space, suggest
from csm_adapt.sweep.study import INTERRUPTED, open_storage, open_study
from lock_holder import lock_held_elsewhere

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo.toml"
CLIPS = 12  # a subset of the demo set: quick to prepare, still a few validation clips

# Trials of a few steps on small micro-batches, validating every step so the pruner has values.
TINY = [
    "train.steps=3", "train.val_every=1", "train.log_every=1", "train.checkpoint_every=100", "train.warmup_steps=0",
    "train.rows_per_step=512", "train.rows_per_micro_batch=512", "train.num_workers=0",
    "train.shuffle_buffer=16", "train.pack_buffer=16", "samples.prompts=[]", 'loggers=[{name = "jsonl"}]',
    "data.val_fraction=0.25",
]  # fmt: skip
SWEEP = """
[sweep]
trials = 4
[sweep.params]
"train.lr" = { type = "float", low = 1e-7, high = 1e-2, log = true }
"loss.decoder_loss_weight" = { type = "categorical", choices = [0.3, 0.5] }
"train.weight_decay" = { type = "fixed", value = 0.01 }
[sweep.pruner]
name = "median"
n_startup_trials = 1
n_warmup_steps = 0
"""


@pytest.fixture(scope="module")
def data_dir(demo_clips) -> Path:
    """Shards prepared once for every test here, as a sweep prepares them once for its trials."""
    root = demo_clips(CLIPS)  # tests/conftest.py; its shards go to data/, apart from other files' prepared/
    recipe = load_recipe(DEMO, [*TINY, f"data.reader.metadata={root / 'metadata.csv'}", f"data.out={root / 'data'}"])
    prepare(recipe.data, recipe.model)
    return root


@pytest.fixture
def recipe_path(tmp_path, data_dir) -> Path:
    """The demo recipe with tiny training, the shared shards and a [sweep] table."""
    raw = toml_io.read_toml(DEMO)
    raw["data"]["reader"]["root"] = str(REPO / "recipes" / "demo_data")
    raw["data"]["reader"]["speakers"] = str(REPO / "recipes" / "demo_data" / "speakers.json")
    raw["data"]["reader"]["metadata"] = str(data_dir / "metadata.csv")
    raw["data"]["out"] = str(data_dir / "data")
    raw["output"]["run_dir"] = str(tmp_path / "runs" / "demo")
    raw.pop("eval")  # trials judged by validation loss here: no generation in them
    path = tmp_path / "sweep.toml"
    path.write_text(toml_io.dumps(raw) + SWEEP)
    return path


def _study(recipe_path: Path, overrides=TINY) -> optuna.Study:
    recipe = load_recipe(recipe_path, overrides)
    return open_study(recipe.sweep, open_storage(None, sweep_dir(recipe)), study_name(recipe))


def test_parallel_cpu_sweep_prunes_and_writes_a_runnable_best_recipe(recipe_path, tmp_path):
    # Two sensible learning rates first, then two that cannot learn in 3 steps: once a good trial
    # has finished, the median pruner (1 startup trial, no warm-up) must stop the hopeless ones.
    study = _study(recipe_path)
    for lr, weight in ((3e-3, 0.5), (3e-3, 0.3), (1e-7, 0.5), (1e-7, 0.3)):
        study.enqueue_trial({"train.lr": lr, "loss.decoder_loss_weight": weight})

    start = time.perf_counter()
    best = run_sweep(recipe_path, TINY, trials=4, workers=2)
    print(f"4 trials on 2 workers: {time.perf_counter() - start:.1f} s")

    trials = _study(recipe_path).get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 4
    assert states.count(TrialState.PRUNED) >= 1, states
    assert states.count(TrialState.COMPLETE) >= 2, states
    assert all(t.state == TrialState.PRUNED for t in trials if t.params["train.lr"] < 1e-6 and t.number >= 2), states
    out = tmp_path / "runs" / "demo-sweep"
    for t in trials:  # an ordinary run directory each, with its resolved recipe (no [sweep] table)
        saved = toml_io.read_toml(out / f"trial-{t.number:04d}" / "recipe.toml")
        assert saved["train"]["lr"] == t.params["train.lr"] and saved["train"]["weight_decay"] == 0.01
        assert saved["train"]["steps"] == 3 and "sweep" not in saved
    assert (out / TRIALS_CSV).read_text().count("\n") == 5
    assert {p.name for p in (out / PLOTS).glob("*.html")} == {
        "history.html",
        "slice.html",
        "importances.html",
        "contour.html",
    }
    assert len([p for p in (out / TENSORBOARD).iterdir() if p.is_dir()]) == 4  # one hparams run per finished trial

    assert best == out / BEST
    best_recipe = load_recipe(best)
    assert best_recipe.sweep is None
    assert best_recipe.train.lr == 3e-3 and best_recipe.train.weight_decay == 0.01
    assert best_recipe.output.run_dir == tmp_path / "runs" / "demo-best"
    result = CliRunner().invoke(cli, ["run", str(best), "train.steps=2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "demo-best" / "checkpoints" / "final").is_dir()


def test_a_killed_sweep_resumes_keeping_finished_trials_and_retrying_interrupted_ones(recipe_path):
    overrides = [*TINY, 'sweep.pruner={name = "none"}']
    run_sweep(recipe_path, overrides, trials=2, workers=2)
    study = _study(recipe_path, overrides)
    before = {t.number: (t.state, t.value, t.datetime_complete) for t in study.get_trials()}
    # What a sweep killed mid-trial leaves behind: a RUNNING trial whose worker is gone.
    study.enqueue_trial({"train.lr": 1e-3, "loss.decoder_loss_weight": 0.3})
    killed = study.ask()
    suggest(killed, load_recipe(recipe_path, overrides).sweep.params)

    run_sweep(recipe_path, overrides, trials=3, workers=1)

    trials = _study(recipe_path, overrides).get_trials()
    assert {t.number: (t.state, t.value, t.datetime_complete) for t in trials[:2]} == before
    assert trials[2].state == TrialState.FAIL and INTERRUPTED in trials[2].user_attrs
    assert [t.state for t in trials[3:]] == [TrialState.COMPLETE]  # the interrupted one, re-tried
    assert trials[3].params == trials[2].params


def test_a_failing_trial_is_recorded_with_its_reason_and_the_sweep_goes_on(recipe_path):
    # A huge learning rate: the engine stops the run on a non-finite loss (TrainingError).
    overrides = [*TINY, 'sweep.pruner={name = "none"}', "train.precision=fp32"]
    study = _study(recipe_path, overrides)
    study.enqueue_trial({"train.lr": 1e30, "loss.decoder_loss_weight": 0.5})
    study.enqueue_trial({"train.lr": 3e-3, "loss.decoder_loss_weight": 0.5})
    run_sweep(recipe_path, overrides, trials=2, workers=1)
    failed, done = _study(recipe_path, overrides).get_trials()
    assert failed.state == TrialState.FAIL and "non-finite" in failed.user_attrs["fail_reason"]
    assert done.state == TrialState.COMPLETE


BAD_SPACES = [
    ('"train.lrr" = { type = "float", low = 1e-5, high = 1e-3 }', "train.lrr: unknown key"),
    ('"train.lr" = { type = "float", low = 1e-3, high = 1e-5 }', "high: must be greater than low"),
    ('"train.lr" = { type = "float", low = 0.0, high = 1e-3, log = true }', "low: must be > 0 with log = true"),
    ('"train.lr" = { type = "float", low = -1.0, high = 1e-3 }', "train.lr: must be > 0"),
    ('"train.schedule" = { type = "categorical", choices = [] }', "choices: needs at least one choice"),
    ('"train.schedule" = { type = "categorical", choices = ["cosine", "cosyne"] }', '"cosyne" is not one of'),
    (
        '"train.warmup_steps" = { type = "float", low = 0.5, high = 10.0 }',
        "train.warmup_steps: expected int, got float",
    ),
    ('"train.warmup_steps" = { type = "int", low = 0, high = 10.5 }', "high: must be an integer"),
    (
        '"train.lr" = { type = "float", low = 1e-5, high = 1e-3, choices = [1] }',
        'choices: does not apply to type "float"',
    ),
    ('"train.lr" = { type = "fixed" }', 'value: missing required key for type "fixed"'),
    ('"train.lr" = { type = "uniform", low = 1e-5, high = 1e-3 }', 'type: expected one of "float"'),
    ('"data.max_rows" = { type = "int", low = 256, high = 512 }', "shards are prepared once"),
    ('"train.steps" = { type = "int", low = 10, high = 20 }', "sweep.steps"),
    ('"loss.decoder_loss_weight" = { type = "float", low = 0.1, high = 1.5 }', "loss.decoder_loss_weight"),
]


@pytest.mark.parametrize(("entry", "error"), BAD_SPACES, ids=[e for e, _ in BAD_SPACES])
def test_bad_search_spaces_are_rejected_naming_the_key(tmp_path, entry, error):
    raw = toml_io.read_toml(DEMO)
    path = tmp_path / "bad.toml"
    path.write_text(toml_io.dumps(raw) + f"[sweep.params]\n{entry}\n")
    with pytest.raises(ConfigError) as info:
        check_space(path, [], load_recipe(path).sweep)
    assert error in str(info.value)


def test_sqlite_storage_is_refused_with_the_reason(recipe_path):
    result = CliRunner().invoke(cli, ["sweep", str(recipe_path), *TINY, "--storage", "sqlite:///sweep.db"])
    assert result.exit_code == 2 and "SQLite cannot be shared by parallel sweep workers" in result.output


def test_slots_give_each_worker_a_gpu_share_or_a_share_of_the_cores():
    assert [s.env for s in plan_slots(2, 1, ["0", "1"], 16)] == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
    ]
    shared = plan_slots(4, 2, ["3", "5"], 16)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in shared] == ["3", "3", "5", "5"] and shared[0].memory_fraction == 0.5
    assert [s.threads for s in plan_slots(2, 1, [], 8)] == [4, 4]
    with pytest.raises(ConfigError, match="only 2 GPU"):
        plan_slots(3, 1, ["0", "1"], 16)


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb") or next(
        iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)), None
    )
    return Path(found).parent if found else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on a Unix socket in a temp dir (as user postgres when we are root:
    the server refuses to run as root)."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason='no PostgreSQL driver (pip install "psycopg[binary]")')
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user and not shutil.which("runuser"):
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    root = Path(tempfile.mkdtemp(prefix="csm-adapt-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    data, port = root / "data", 54329

    def run(*cmd):
        return subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True)

    run(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "sweep")
    run(
        bin_dir / "pg_ctl",
        "-D",
        data,
        "-w",
        "-l",
        root / "server.log",
        "-o",
        f"-k {root} -p {port} -c listen_addresses=''",
        "start",
    )
    try:
        yield f"postgresql://sweep@/postgres?host={root}&port={port}"
    finally:
        run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_workers_share_a_study_in_postgresql(recipe_path, postgres_url):
    overrides = [*TINY, 'sweep.pruner={name = "none"}']
    run_sweep(recipe_path, overrides, trials=2, workers=2, storage=postgres_url)
    recipe = load_recipe(recipe_path, overrides)
    study = optuna.load_study(study_name=study_name(recipe), storage=postgres_url)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert not (sweep_dir(recipe) / "journal.log").exists()
    assert load_recipe(sweep_dir(recipe) / BEST).train.lr == study.best_params["train.lr"]


def test_a_sweep_directory_in_use_is_refused_naming_the_holder(recipe_path):
    out = sweep_dir(load_recipe(recipe_path))
    with lock_held_elsewhere(out) as pid:
        with pytest.raises(CsmAdaptError, match=rf"is in use by another csm-adapt sweep \(PID {pid}\)"):
            run_sweep(recipe_path, [], trials=1, workers=1, console=Console(quiet=True))
        assert not (out / "journal.log").exists()  # refused before the study was opened


def test_objective_may_be_an_eval_metric_with_its_direction(tmp_path):
    raw = toml_io.read_toml(DEMO)
    raw["output"]["run_dir"] = str(tmp_path / "runs" / "demo")
    path = tmp_path / "sweep.toml"
    path.write_text(toml_io.dumps(raw) + SWEEP.replace("trials = 4", 'trials = 4\nobjective = "eval/ovrl:max"'))
    study = _study(path, [])
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    with pytest.raises(ConfigError, match="sweep.objective: no evaluator of eval.evaluators produces 'cer'"):
        load_recipe(path, ['sweep.objective="eval/cer:min"'])
    with pytest.raises(ConfigError, match="sweep.objective: .* an eval metric needs its direction"):
        load_recipe(path, ['sweep.objective="eval/ovrl"'])
