"""Damaged shards, a full disk and hostile input, through the real command line: each ends in one
clear line (exit status 2) or is handled as documented, and nothing earlier is lost."""

from __future__ import annotations

import json
import shutil
import tarfile

from faultkit import csm, demo_subset, files, write_recipe

from csm_adapt.training.run_checkpoints import latest_step_dir


def _copy_data(demo, tmp_path):
    data = tmp_path / "prepared"
    shutil.copytree(demo / "prepared", data)
    return data


def _last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_damaged_shards_stop_the_run_naming_the_shard_or_are_skipped(demo, tmp_path):
    data = _copy_data(demo, tmp_path)
    shard = data / "train-000000.tar"
    with tarfile.open(shard) as tar:
        header = tar.getmembers()[3].offset
    damaged = bytearray(shard.read_bytes())
    damaged[header : header + 16] = b"\0" * 16  # a corrupted tar header: tarfile sees the end of the archive
    shard.write_bytes(bytes(damaged))
    recipe = write_recipe(tmp_path / "r.toml", demo, data=data, run_dir=tmp_path / "run", steps=2)
    code, out = csm(["run", recipe], tmp_path)
    assert code == 2, out
    assert "train-000000.tar: damaged shard (its sha256 differs from index.json)" in _last_line(out)
    assert "--rebuild" in out and "Traceback" not in out

    shard.write_bytes(bytes(damaged)[: header - 512])  # and truncated
    skip = write_recipe(
        tmp_path / "s.toml", demo, data=data, run_dir=tmp_path / "run", steps=2, data_extra='on_corrupt = "skip"'
    )
    code, out = csm(["run", skip], tmp_path)
    assert code == 2 and "split 'train' has no undamaged samples" in out  # the only train shard
    # Two more clips' worth of shards would let it train; one damaged shard of several is skipped:
    # tests/test_loader.py::test_a_damaged_shard_can_be_skipped_counted_and_reported.


def test_a_full_disk_while_checkpointing_keeps_the_earlier_checkpoints_and_says_how_to_resume(demo, tmp_path):
    run_dir = tmp_path / "run"
    first = write_recipe(tmp_path / "r2.toml", demo, data=demo / "prepared", run_dir=run_dir, steps=2)
    code, out = csm(["run", first], tmp_path)
    assert code == 0, out
    step2 = latest_step_dir(run_dir)
    kept = files(step2)
    limit = max(len(content) for content in kept.values()) - 1  # the next checkpoint's largest file will not fit

    longer = write_recipe(tmp_path / "r4.toml", demo, data=demo / "prepared", run_dir=run_dir, steps=4)
    code, out = csm(["run", longer, "--resume"], tmp_path, fsize=limit)
    assert code == 2, out
    line = _last_line(out)
    assert "could not write" in line and "checkpoints/step-000004" in line and "free" in line, line
    assert f"the newest is {step2}" in line and f"csm-adapt run {run_dir / 'recipe.toml'} --resume" in line
    assert "Traceback" not in out
    assert files(step2) == kept and latest_step_dir(run_dir) == step2  # nothing half-written left behind
    assert not list((run_dir / "checkpoints").glob(".*"))

    code, out = csm(["run", longer, "--resume"], tmp_path)
    assert code == 0, out
    assert latest_step_dir(run_dir).name == "step-000004"


def test_hostile_metadata_prepares_what_it_can_and_names_the_rest(tmp_path):
    dataset = demo_subset(tmp_path / "set", 8)
    lines = (dataset / "metadata.csv").read_text("utf-8").splitlines()
    lines[2] = "../../secret|Un secret."  # leads outside the dataset
    lines[4] = "fr_x|too|many|fields"
    (dataset / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode("utf-8"))  # a BOM
    recipe = write_recipe(tmp_path / "r.toml", dataset, data=tmp_path / "out", run_dir=tmp_path / "run")
    code, out = csm(["prepare", recipe, "--device", "cpu"], tmp_path)
    assert code == 0, out
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert sum(index["summary"]["kept"].values()) == 6  # the first line (after the BOM) kept
    assert index["summary"]["rejected_by_reason"] == {"malformed": 1, "path outside root": 1}

    (dataset / "metadata.csv").write_bytes(
        "\n".join(lines[:2]).encode("utf-8") + "\nfr_y|Voilà l'été.\n".encode("latin-1")
    )
    code, out = csm(["prepare", recipe, "--device", "cpu", "--rebuild"], tmp_path)
    assert code == 2 and "metadata.csv:3: not UTF-8 (byte 0xe0 at column 10)" in _last_line(out), out
    assert "encoding" in out and "Traceback" not in out


def test_hostile_checkpoint_configs_end_in_one_line(tmp_path):
    from csm_adapt.model.checkpoint import build_model, save_model

    model_dir = save_model(build_model("micro"), tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    generate = ["generate", "--model", model_dir, "--text", "x", "--out", tmp_path / "x.wav"]
    generate += ["--text-tokenizer", "offline", "--audio-codec", "offline"]
    convert = ["convert", model_dir, tmp_path / "out", "--to", "transformers"]
    for (key, value), args in zip(
        [("audio_num_codebooks", -3), ("text_vocab_size", "big"), ("backbone_flavor", "huge")],
        [generate, convert, convert],
    ):
        (model_dir / "config.json").write_text(json.dumps({**config, key: value}))
        code, out = csm(args, tmp_path)
        assert code == 2 and "Traceback" not in out, out
        assert f"config.json: invalid model config: {key}" in _last_line(out), out
