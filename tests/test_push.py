"""`csm-adapt push` (issue 14, item 14): the folder it would upload, checked through --dry-run, and
the upload itself through a stand-in for huggingface_hub's HfApi."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from csm_adapt.cli import cli
from csm_adapt.model.checkpoint import build_model, load_model, save_model
from csm_adapt.model.synthesizer import write_frontend


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run as `csm-adapt run` leaves it: best checkpoint, recipe, index, metrics, a sample."""
    run = tmp_path_factory.mktemp("runs") / "french"
    best = run / "checkpoints" / "best"
    save_model(build_model("micro", seed=1), best)
    write_frontend(best, "unsloth/Llama-3.2-1B", "kyutai/moshiko-pytorch-bf16")
    (best / "best.json").write_text(json.dumps({"step": 400, "val_loss": 2.34567}))
    data = run / "data"
    data.mkdir()
    summary = {"samples_read": 1210, "kept": {"train": 1180, "val": 24}, "rejected": 6, "hours": 1.5}
    (data / "index.json").write_text(json.dumps({"summary": summary}))
    (run / "recipe.toml").write_text(
        f'[model]\nconfig = "micro"\ncheckpoint = "sesame/csm-1b"\n[data]\nout = "{data}"\n'
        '[data.reader]\nname = "ljspeech"\n[loss]\nstrategy = "amortized"\n'
        '[train]\nsteps = 500\nlr = 3e-05\nprecision = "bf16"\n'
        '[[samples.prompts]]\ntext = "Marie aime les pommes."\n'
        f'[output]\nrun_dir = "{run}"\n'
    )
    lines = [{"step": 490, "name": "train/loss", "value": 2.1}, {"step": 500, "name": "train/loss", "value": 2.0}]
    lines.append({"step": 500, "name": "val/loss", "value": 2.4})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line | {"time": 0.0}) + "\n" for line in lines))
    for step in ("step-000250", "step-000500"):
        (run / "samples" / step).mkdir(parents=True)
        sf.write(run / "samples" / step / "0.wav", np.zeros(2400, np.float32) + (step == "step-000500") * 0.1, 24000)
    return run


def test_dry_run_writes_the_folder_it_would_upload(run_dir, tmp_path):
    out = tmp_path / "hub"
    result = CliRunner().invoke(
        cli, ["push", str(run_dir / "checkpoints" / "best"), "me/csm-french", "--language", "fr", "--dry-run", str(out)]
    )
    assert result.exit_code == 0, result.output
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "README.md", "config.json", "csm_adapt.json", "model.safetensors", "recipe.toml", "samples/sample.wav"
    ]  # fmt: skip
    assert "would upload to me/csm-french" in result.output
    assert load_model(out).args.backbone_flavor == "micro-64"
    assert json.loads((out / "csm_adapt.json").read_text())["text_tokenizer"] == "unsloth/Llama-3.2-1B"
    assert sf.read(out / "samples" / "sample.wav")[0].max() == pytest.approx(0.1, abs=1e-3)  # the latest sample
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    for line in ("library_name: csm-adapt", "base_model: sesame/csm-1b", "license: apache-2.0", "- fr"):
        assert f"\n{line}\n" in front, line
    assert "# csm-french" in card and "csm-adapt generate --model me/csm-french" in card
    assert "- samples: 1180 train, 24 validation (1210 read, 6 rejected)" in card
    assert "- audio: 1.50 hours" in card
    assert "| `train.lr` | 3e-05 |" in card and "| `loss.strategy` | amortized |" in card
    assert "| best validation loss | 2.3457 (step 400) |" in card
    assert "| last `train/loss` | 2.0000 (step 500) |" in card and "| last `val/loss` | 2.4000 (step 500) |" in card
    assert '`samples/sample.wav`: "Marie aime les pommes." at step-000500' in card


def test_transformers_layout_on_request(run_dir, tmp_path):
    out = tmp_path / "hub"
    args = ["push", str(run_dir / "checkpoints" / "best"), "me/x", "--layout", "transformers", "--dry-run", str(out)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "csm"
    assert (out / "csm_adapt.json").is_file() and "transformers layout" in (out / "README.md").read_text()


def test_push_uploads_the_same_folder(run_dir, monkeypatch):
    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls["create"] = (repo_id, private, exist_ok)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls["files"] = sorted(
                str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()
            )
            calls["message"] = commit_message

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    result = CliRunner().invoke(cli, ["push", str(run_dir / "checkpoints" / "best"), "me/csm-french", "--private"])
    assert result.exit_code == 0, result.output
    assert calls["create"] == ("me/csm-french", True, True)
    assert "README.md" in calls["files"] and "model.safetensors" in calls["files"]
    assert calls["message"] == "Upload from csm-adapt"
    assert "pushed" in result.output and "https://huggingface.co/me/csm-french" in result.output


def test_not_a_checkpoint_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["push", str(tmp_path), "me/x", "--dry-run", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a checkpoint directory (no config.json)" in result.output
