"""The `wandb` logger, run with WANDB_MODE=offline, its files read back (issue 14, item 13)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import torch

from csm_adapt.plugin_api import RunInfo

pytest.importorskip("wandb", reason="the wandb extra: pip install 'csm-adapt[wandb]'")
from wandb.proto import wandb_internal_pb2  # noqa: E402

from csm_adapt_plugins.wandb_logger import RUN_ID_FILE, WandbLogger, WandbOptions  # noqa: E402


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log of 32 KiB blocks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            pending = b""
            yield record
        elif kind in (2, 3):  # FIRST, MIDDLE
            pending += chunk
        else:  # zero padding to the end of the block
            pos += block - pos % block


def items(updates) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}


def test_offline_run_holds_config_scalars_captioned_audio_and_final_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "french-v2"
    logger = WandbLogger(WandbOptions(tags=("test",)), run_dir)
    logger.begin(RunInfo(10, 0, {"train": {"lr": 3e-5}, "model": {"config": "micro"}}, ""))
    logger.log_scalars(1, {"train/loss": 3.0, "train/lr": 1e-5})
    logger.log_scalars(2, {"train/loss": 2.0, "train/lr": 2e-5})
    logger.log_audio(2, "samples/0", torch.sin(torch.arange(2400) / 10) * 1.5, 24_000)
    logger.log_text(2, "samples/0", "[0] Marie aime les pommes.")
    logger.log_hparams({"train.lr": 3e-5}, {"best_val_loss": 1.5})
    logger.close()

    (run,) = (run_dir / "wandb").glob("offline-run-*")
    # wandb's service process may still be writing the log when finish() returns: wait for its end.
    deadline = time.monotonic() + 120
    while True:
        records = list(wandb_records(next(run.glob("run-*.wandb"))))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (info,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert info.display_name == "french-v2"  # named after the run directory
    assert info.run_id == (run_dir / RUN_ID_FILE).read_text().strip()
    assert items(info.config.update)["train"] == {"lr": 3e-5}  # the recipe as the config
    history = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["train/loss"]) for h in history] == [(1, 3), (2, 2)]
    audio = {key.split("/")[-1]: value for key, value in history[1].items() if key.startswith("samples/0/")}
    assert audio["caption"] == "[0] Marie aime les pommes." and audio["_type"] == "audio-file"
    assert (run / "files" / audio["path"]).read_bytes()[:4] == b"RIFF"
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(items(r.summary.update))
    assert summary["best_val_loss"] == 1.5


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    from csm_adapt.errors import PluginError

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(PluginError, match=r"pip install 'csm-adapt\[wandb\]'"):
        WandbLogger(WandbOptions(), tmp_path)
