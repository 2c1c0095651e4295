"""The training engine end to end on the offline demo data: learning, resume, DDP, NaN stop, logs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from csm_adapt.cli import cli
from csm_adapt.config.recipe import load_recipe
from csm_adapt.errors import CsmAdaptError
from csm_adapt.files import DirLock
from csm_adapt.model.checkpoint import load_model
from csm_adapt.training.loop import train
from csm_adapt.training.run_checkpoints import load_trainer_state
from lock_holder import lock_held_elsewhere
from runs import KILLER, read_metrics, write_train_recipe  # tests/runs.py

REPO = Path(__file__).parents[1]

# Local plugins written into the test's directory, the way a user would (KILLER: tests/runs.py).
NAN_LOSS = '''
import attrs
from csm_adapt import hookimpl


@attrs.frozen
class NanOptions:
    after_calls: int


class NanAfter:
    """The full strategy until `after_calls` combines, then a NaN loss."""

    def __init__(self, options):
        self.options, self.calls = options, 0

    def select_decoder_frames(self, target_mask, generator):
        return target_mask

    def combine(self, parts):
        self.calls += 1
        loss = 0.5 * parts.c0 + 0.5 * parts.decoder
        return loss * float("nan") if self.calls > self.options.after_calls else loss


@hookimpl
def register_loss_strategies(register):
    register("nan_after", NanAfter, options=NanOptions)
'''


# Records what the loggers are told the run is: the recipe as it trains.
RECIPE_RECORDER = """
import json
from csm_adapt import hookimpl
from csm_adapt.plugin_api import Logger


class RecipeRecorder(Logger):
    def begin(self, run):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logged_train.json").write_text(json.dumps(run.recipe["train"]))


@hookimpl
def register_loggers(register):
    register("recipe_recorder", RecipeRecorder)
"""


def run_recipe(directory, dataset, overrides=(), **kw):
    run_dir = directory / "run"
    return run_dir, load_recipe(write_train_recipe(directory, dataset, run_dir=run_dir, **kw), overrides)


def test_tiny_model_learns_and_logs_everything(tmp_path, demo_dataset):
    extra = (
        '[[loggers]]\nname = "tensorboard"\n\n'
        '[samples]\nevery = 40\nmax_audio_ms = 400\n[[samples.prompts]]\ntext = "Bonjour."\n'
    )
    run_dir, recipe = run_recipe(
        tmp_path, demo_dataset, ["train.steps=40", "train.val_every=20", "train.checkpoint_every=20"], extra=extra
    )
    final = train(recipe)

    losses = read_metrics(run_dir, "train/loss")
    first, last = losses[1], losses[40]
    assert last < 0.6 * first, f"loss fell only from {first:.3f} to {last:.3f}"
    val = read_metrics(run_dir, "val/loss")
    best = json.loads((run_dir / "checkpoints" / "best" / "best.json").read_text())
    assert best == {"step": min(val, key=val.get), "best_by": "val/loss", "value": min(val.values())}

    # Reloadable checkpoints in the original layout, best and final.
    for d in (final, run_dir / "checkpoints" / "best", run_dir / "checkpoints" / "step-000040"):
        assert load_model(d).args.backbone_flavor == "micro-64"
    assert (run_dir / "samples" / "step-000040" / "0.wav").is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"tensors": 0, "scalars": 0}
    events = EventAccumulator(str(run_dir / "tensorboard" / "run"), size_guidance=guidance).Reload()
    assert {"loss/train", "loss/train_c0", "loss/train_decoder", "loss/val", "train_accuracy/c00"} <= set(
        events.Tags()["scalars"]
    )
    assert [e.step for e in events.Scalars("loss/train")] == list(range(1, 41))
    wav, label = events.Tensors("samples/0")[0].tensor_proto.string_val
    assert wav[:4] == b"RIFF" and int.from_bytes(wav[24:28], "little") == 24_000  # the WAV header's rate
    assert label.decode().startswith("[0] Bonjour.")


@pytest.mark.parametrize(("units", "expected"), [(None, "fp32"), ("avx512_bf16", "fp32")])
def test_auto_precision_is_resolved_for_the_device_and_logged(tmp_path, demo_dataset, monkeypatch, units, expected):
    from csm_adapt.training import precision

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda cpuinfo=None: units)
    (tmp_path / "recorder.py").write_text(RECIPE_RECORDER)
    overrides = ["train.precision=auto", "train.steps=1", "train.val_every=1", "train.checkpoint_every=1"]
    extra = '[[loggers]]\nname = "recipe_recorder"\n'
    run_dir, recipe = run_recipe(tmp_path, demo_dataset, overrides, plugins=["recorder.py"], extra=extra)
    assert recipe.train.precision == "auto"
    train(recipe)
    assert json.loads((run_dir / "logged_train.json").read_text())["precision"] == expected


def test_kill_and_resume_matches_uninterrupted(tmp_path, demo_dataset):
    # A DataLoader worker too: its data position must resume exactly as well.
    whole_dir, whole = run_recipe(tmp_path / "whole", demo_dataset, ["train.num_workers=1"], strategy="amortized")
    train(whole)

    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "killer.py").write_text(KILLER)
    extra = '[[loggers]]\nname = "killer"\nat_step = 7\n'
    killed_dir, killed = run_recipe(
        tmp_path / "killed",
        demo_dataset,
        ["train.num_workers=1"],
        strategy="amortized",
        plugins=["killer.py"],
        extra=extra,
    )
    with pytest.raises(KeyboardInterrupt):
        train(killed)
    assert [p.name for p in sorted((killed_dir / "checkpoints").glob("step-*"))] == ["step-000004"]

    resumed = load_recipe(killed_dir.parent / "recipe.toml", ["loggers.1.at_step=0"])
    train(resumed, resume=True)
    a, b = load_model(whole_dir / "checkpoints" / "final"), load_model(killed_dir / "checkpoints" / "final")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert read_metrics(whole_dir, "train/loss") == read_metrics(killed_dir, "train/loss")
    assert read_metrics(whole_dir, "val/loss") == read_metrics(killed_dir, "val/loss")
    # metrics.jsonl itself, record for record: each step once (the killed run's steps 5-6 were dropped).
    assert jsonl_records(killed_dir) == jsonl_records(whole_dir)
    # The saved RNG state too: a resume costs no draw.
    a, b = (load_trainer_state(d / "checkpoints" / "step-000008") for d in (whole_dir, killed_dir))
    assert torch.equal(a["rng_cpu"], b["rng_cpu"])


def jsonl_records(run_dir: Path) -> list[tuple]:
    """metrics.jsonl without wall-clock times and rates: (step, name, value) per line, in order."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["name"], r["value"]) for r in map(json.loads, lines) if not r["name"].endswith("_per_s")]


def test_a_second_fresh_run_into_the_same_directory_is_refused(tmp_path, demo_dataset):
    _, recipe = run_recipe(tmp_path, demo_dataset, ["train.steps=2", "train.checkpoint_every=2"])
    train(recipe)
    with pytest.raises(CsmAdaptError, match="already holds a run.*--resume"):
        train(recipe)


def test_a_run_directory_in_use_is_refused_naming_the_holder_and_freed_by_its_death(tmp_path, demo_dataset):
    run_dir, recipe = run_recipe(tmp_path, demo_dataset)
    with lock_held_elsewhere(run_dir) as pid:
        with pytest.raises(CsmAdaptError, match=rf"{run_dir} is in use by another csm-adapt run \(PID {pid}\)"):
            train(recipe)
        result = CliRunner().invoke(cli, ["run", str(tmp_path / "recipe.toml")])
        assert result.exit_code != 0 and f"PID {pid}" in result.output
        assert not (run_dir / "recipe.toml").exists() and not (run_dir / "metrics.jsonl").exists()
    # The holder was killed (-9): the kernel dropped its lock, so the directory is free again.
    with DirLock(run_dir, "test"):
        pass
    assert not (run_dir / ".lock").exists()


def test_a_refused_run_writes_nothing(tmp_path, demo_dataset):
    run_dir, _ = run_recipe(tmp_path, demo_dataset)
    (run_dir / "checkpoints" / "step-000004").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-000004" / "trainer.pt").write_bytes(b"")
    (run_dir / "recipe.toml").write_text("# the earlier run's recipe\n")
    before = sorted((p.relative_to(run_dir), p.read_bytes() if p.is_file() else None) for p in run_dir.rglob("*"))
    for args in ([], ["train.lr=1.0"]):
        result = CliRunner().invoke(cli, ["run", str(tmp_path / "recipe.toml"), *args])
        assert result.exit_code != 0 and "already holds a run" in result.output
    after = sorted((p.relative_to(run_dir), p.read_bytes() if p.is_file() else None) for p in run_dir.rglob("*"))
    assert after == before

    empty_dir, _ = run_recipe(tmp_path / "empty", demo_dataset)
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "empty" / "recipe.toml"), "--resume"])
    assert result.exit_code != 0 and "no complete checkpoint" in result.output
    assert not empty_dir.exists() or not any(empty_dir.iterdir())


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, demo_dataset):
    _, recipe = run_recipe(tmp_path, demo_dataset)
    with pytest.raises(CsmAdaptError, match="--resume: no complete checkpoint"):
        train(recipe, resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, demo_dataset):
    (tmp_path / "nan_loss.py").write_text(NAN_LOSS)
    # Two micro-batches per step, one combine each: NaN in step 4, after the checkpoint at step 2.
    _, recipe = run_recipe(
        tmp_path,
        demo_dataset,
        ["train.checkpoint_every=2", "loss.after_calls=6"],
        strategy="nan_after",
        plugins=["nan_loss.py"],
    )
    with pytest.raises(CsmAdaptError, match=r"non-finite loss.*step 4.*step-000002"):
        train(recipe)
    run_dir = recipe.output.run_dir
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002"]
    model = load_model(run_dir / "checkpoints" / "step-000002")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_two_processes_match_one_process_with_ddp_and_fsdp(tmp_path, demo_dataset):
    # One sample per micro-batch, no shuffling: one process with two micro-batches per step and
    # two ranks with one each see the same samples in every optimizer step.
    same = [
        "train.steps=4",
        "train.shuffle_buffer=1",
        "train.pack_buffer=1",
        "train.val_every=100",
        "train.checkpoint_every=100",
    ]
    one_dir, one = run_recipe(tmp_path / "one", demo_dataset, same)
    train(one)
    reference = load_model(one_dir / "checkpoints" / "final").state_dict()

    for parallel in ("ddp", "fsdp"):
        two_dir = tmp_path / parallel / "run"
        recipe = write_train_recipe(tmp_path / parallel, demo_dataset, run_dir=two_dir)
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "csm_adapt", "run", str(recipe), *same, f"train.parallel={parallel!r}",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

        two = load_model(two_dir / "checkpoints" / "final").state_dict()
        # Two ranks sum gradients in another order than one process. Adam divides by sqrt(v), so
        # where a gradient is near zero (rarely used embedding rows) that rounding moves a weight by
        # up to ~1e-5 over 4 steps at lr 3e-3 on some CPUs: 5e-5 is ~0.4 % of the 4 steps' reach.
        for name, x in reference.items():
            diff = (x - two[name]).abs().max()
            assert torch.allclose(x, two[name], atol=5e-5, rtol=1e-4), f"{parallel}: {name} differs by {diff}"
        la, lb = read_metrics(one_dir, "train/loss"), read_metrics(two_dir, "train/loss")
        assert la.keys() == lb.keys() == {1, 2, 3, 4}
        assert all(abs(la[s] - lb[s]) < 1e-4 for s in la), parallel


def test_demo_recipe_validates(monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(cli, ["validate", "recipes/demo.toml"])
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output


def test_evaluation_during_training_logs_eval_metrics_and_keeps_the_best_by_one(tmp_path, demo_dataset):
    extra = (
        '[[loggers]]\nname = "tensorboard"\n\n'
        "[eval]\nevery = 4\nmax_prompts = 2\nmax_audio_ms = 240\nbatch_size = 2\n"
        '[[eval.evaluators]]\nname = "stopping"\n[[eval.evaluators]]\nname = "quality"\n'
    )
    run_dir, recipe = run_recipe(tmp_path, demo_dataset, ['train.best_by="eval/ovrl:max"'], extra=extra)
    train(recipe)

    for name in ("eval/eos", "eval/duration_ratio", "eval/sig", "eval/bak", "eval/ovrl"):
        assert sorted(read_metrics(run_dir, name)) == [4, 8], name
    ovrl = read_metrics(run_dir, "eval/ovrl")
    best = json.loads((run_dir / "checkpoints" / "best" / "best.json").read_text())
    assert best == {"step": max(ovrl, key=ovrl.get), "best_by": "eval/ovrl", "value": max(ovrl.values())}
    assert 0 <= read_metrics(run_dir, "eval/eos")[8] <= 1 and read_metrics(run_dir, "eval/duration_ratio")[8] > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from csm_adapt.evaluation.prompts import val_prompts

    # Events of the run named after its directory; audio as labelled tensor summaries.
    events = EventAccumulator(str(run_dir / "tensorboard" / run_dir.name), size_guidance={"tensors": 0}).Reload()
    prompts = val_prompts(recipe.data.out, 2)
    assert len(prompts) == 2
    for prompt in prompts:
        tag = f"eval/{prompt.id}"
        assert [e.step for e in events.Tensors(tag)] == [4, 8]
        assert events.SummaryMetadata(tag).summary_description == prompt.text
        assert events.Tensors(tag)[0].tensor_proto.string_val[1].decode() == prompt.text
