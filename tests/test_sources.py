"""`validate` (and `run`, before any work) check that checkpoint, tokenizer and codec can be had
(issue 14, item 6): a local path, the Hugging Face cache, or the hub, asked without downloading."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from click.testing import CliRunner
from huggingface_hub import constants

from csm_adapt.cli import cli
from csm_adapt.errors import CheckpointError
from csm_adapt.model.sources import check_model_sources, check_reachable, is_local

RECIPE = """
[model]
config = "micro"
text_tokenizer = "{tokenizer}"
audio_codec = "offline"
[data]
out = "prepared"
[data.reader]
name = "json"
path = "clips.json"
[loss]
strategy = "full"
[output]
run_dir = "run"
"""


def fake_cache(root, repo: str, filename: str) -> None:
    """A Hugging Face cache holding one file of `repo`, laid out as huggingface_hub writes it."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)
    (folder / "snapshots" / "0123abcd" / filename).write_text("{}")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """An empty cache, the network allowed, and a local fake hub answering HEAD with `hub.answer`."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    class Handler(BaseHTTPRequestHandler):
        answer = (200, {})

        def do_HEAD(self):  # noqa: N802 (http.server's name)
            status, headers = Handler.answer
            self.send_response(status)
            for key, value in {"X-Repo-Commit": "0123abcd", "ETag": '"e"', "Content-Length": "2", **headers}.items():
                self.send_header(key, value)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield Handler
    server.shutdown()


def test_a_mistyped_local_path_says_no_such_file_or_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert is_local("runs/nope") and not is_local("sesame/csm-1b")
    with pytest.raises(CheckpointError, match="^model.checkpoint: runs/nope: no such file or directory$"):
        check_reachable("model.checkpoint", "runs/nope", ("config.json",))
    (tmp_path / "recipe.toml").write_text(RECIPE.format(tokenizer="runs/nope"))
    result = CliRunner().invoke(cli, ["validate", "recipe.toml"])
    assert result.exit_code == 2
    assert 'model.text_tokenizer: "runs/nope": no such file or directory' in result.output


def test_cached_files_pass_without_asking_the_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fake_cache(tmp_path, "owner/tok", "tokenizer.json")
    fake_cache(tmp_path, "owner/model", "ckpt.pt")  # the legacy layout will do
    check_model_sources("owner/model", "owner/tok", "offline")
    with pytest.raises(CheckpointError, match="model.audio_codec: owner/codec is not in the Hugging Face cache and "):
        check_reachable("model.audio_codec", "owner/codec", ("mimi.safetensors",))


def test_offline_and_not_cached_fails_at_once_saying_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "clips.json").write_text("[]")
    (tmp_path / "recipe.toml").write_text(RECIPE.format(tokenizer="owner/absent-tokenizer"))
    result = CliRunner().invoke(cli, ["validate", "recipe.toml"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: model.text_tokenizer: owner/absent-tokenizer is not in the Hugging Face cache and HF_HUB_OFFLINE "
        "is set: download it once with the network (unset HF_HUB_OFFLINE), or give a local path instead of the hub id"
    )


def test_hub_answers_found_gated_missing(hub):
    check_reachable("model.text_tokenizer", "owner/tok", ("tokenizer.json",))
    hub.answer = (401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"})
    with pytest.raises(CheckpointError, match="model.checkpoint: sesame/csm-1b is gated .* set HF_TOKEN"):
        check_reachable("model.checkpoint", "sesame/csm-1b", ("config.json",))
    hub.answer = (404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "nope"})
    with pytest.raises(CheckpointError, match="owner/typo: no such repository on the Hugging Face hub"):
        check_reachable("model.checkpoint", "owner/typo", ("config.json",))
    hub.answer = (404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "nope"})
    with pytest.raises(CheckpointError, match="owner/empty has none of config.json, ckpt.pt on the Hugging Face hub"):
        check_reachable("model.checkpoint", "owner/empty", ("config.json", "ckpt.pt"))


def test_an_unreachable_hub_fails_fast(hub, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="cannot reach the Hugging Face hub for owner/tok .* HF_HUB_OFFLINE=1"):
        check_reachable("model.text_tokenizer", "owner/tok", ("tokenizer.json",))
    assert time.monotonic() - started < 5
