"""kill -9 at random points of real `csm-adapt run` and `csm-adapt prepare` processes, then
continuing: the end result must equal an uninterrupted run's (README, "Reliability")."""

from __future__ import annotations

import time

from faultkit import csm, demo_subset, files, kill_after, kill_points, metrics_records, write_recipe

from csm_adapt.training.run_checkpoints import latest_step_dir


def test_kill9_during_training_then_resume_matches_an_uninterrupted_run(demo, tmp_path):
    whole = write_recipe(tmp_path / "whole.toml", demo, data=demo / "prepared", run_dir=tmp_path / "whole")
    started = time.monotonic()
    code, out = csm(["run", whole], tmp_path)
    assert code == 0, out
    duration = time.monotonic() - started

    run_dir = tmp_path / "killed"
    recipe = write_recipe(tmp_path / "killed.toml", demo, data=demo / "prepared", run_dir=run_dir)

    def args() -> list:
        return ["run", recipe, *(["--resume"] if latest_step_dir(run_dir) else [])]

    kills = 0
    for delay in kill_points(seed=15, count=2, longest=0.9 * duration):
        if not kill_after(args(), tmp_path, delay):
            break  # it finished first
        kills += 1
    code, out = csm(args(), tmp_path)
    assert code == 0, out
    assert kills >= 1

    final = files(tmp_path / "whole" / "checkpoints" / "final")
    assert files(run_dir / "checkpoints" / "final") == final and "model.safetensors" in final
    assert metrics_records(run_dir) == metrics_records(tmp_path / "whole")


def test_kill9_during_prepare_then_again_leaves_byte_identical_files(tmp_path):
    dataset = demo_subset(tmp_path / "set", 8)
    whole = write_recipe(
        tmp_path / "whole.toml", dataset, data=tmp_path / "whole", run_dir=tmp_path / "r", shard_samples=2
    )
    started = time.monotonic()
    code, out = csm(["prepare", whole, "--device", "cpu"], tmp_path)
    assert code == 0, out
    duration = time.monotonic() - started

    recipe = write_recipe(
        tmp_path / "k.toml", dataset, data=tmp_path / "killed", run_dir=tmp_path / "r", shard_samples=2
    )
    killed = [kill_after(["prepare", recipe, "--device", "cpu"], tmp_path, d) for d in kill_points(10, 2, duration)]
    code, out = csm(["prepare", recipe, "--device", "cpu"], tmp_path)
    assert code == 0, out
    assert any(killed)
    expected = files(tmp_path / "whole")
    assert files(tmp_path / "killed") == expected  # no leftover temporary file, lock or progress record
    assert sum(name.endswith(".tar") for name in expected) == 4  # 6 train + 2 val clips, 2 a shard
