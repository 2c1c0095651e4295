"""The built-in loggers: tensorboard (event files read back), console (rendered output) and jsonl."""

from __future__ import annotations

import io
import json
from pathlib import Path

import attrs
import pytest
import torch
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import AUDIO, SCALARS, TENSORS, EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from csm_adapt.config.structure import from_dict
from csm_adapt.errors import ConfigError
from csm_adapt.plugin_api import NoOptions, RunInfo
from csm_adapt_plugins.console_logger import ConsoleLogger, ConsoleOptions
from csm_adapt_plugins.jsonl_logger import JsonlLogger
from csm_adapt_plugins.tensorboard_logger import TensorBoardLogger, TensorBoardOptions, flatten

RECIPE_TOML = '[train]\nlr = 3e-5\n\n[loss]\nstrategy = "amortized"\n'
RUN = RunInfo(total_steps=100, start_step=0, recipe={"train": {"lr": 3e-5}}, recipe_toml=RECIPE_TOML)


def val_scalars(loss: float) -> dict[str, float]:
    accuracies = {f"val/acc/c{k:02d}": 0.5 if k == 0 else 0.25 for k in range(32)}
    return {"val/loss": loss, "val/loss_c0": 1.5, "val/loss_decoder": 2.5, **accuracies}


def read_events(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={AUDIO: 0, SCALARS: 0, TENSORS: 0})
    events.Reload()
    return events


def test_tensorboard_event_file_holds_scalars_audio_text_and_recipe(tmp_path):
    run_dir = tmp_path / "french-v2"
    logger = TensorBoardLogger(TensorBoardOptions(), run_dir)
    logger.begin(RUN)
    logger.log_scalars(10, {"train/loss": 3.0, "train/lr": 1e-5})
    logger.log_scalars(20, {"train/loss": 2.0, "train/lr": 2e-5})
    logger.log_scalars(20, val_scalars(2.2))
    wav = torch.sin(torch.arange(2400) / 10) * 1.5  # 0.1 s, partly out of [-1, 1]
    logger.log_audio(20, "samples/0", wav, 24000)
    logger.log_text(20, "samples/0", "[0] Marie aime les pommes.")
    logger.log_audio(20, "samples/1", wav, 24000)  # no text follows: written without a label at close
    logger.close()

    # The run is named after its run directory: the events sit in tensorboard/<run dir name>.
    events = read_events(run_dir / "tensorboard" / "french-v2")
    assert [(e.step, e.value) for e in events.Scalars("loss/train")] == [(10, 3.0), (20, 2.0)]
    assert events.Scalars("loss/val")[0].value == pytest.approx(2.2)
    assert events.Scalars("loss/val_c0")[0].value == pytest.approx(1.5)
    assert events.Scalars("val_accuracy/c00")[0].value == pytest.approx(0.5)
    tags = events.Tags()["scalars"]
    assert len(tags) == 2 + 3 + 32
    # TensorBoard shows groups alphabetically and opens the first: the losses.
    assert sorted({tag.split("/")[0] for tag in tags}) == ["loss", "train", "val_accuracy"]
    clips = {tag: events.Tensors(tag)[0] for tag in ("samples/0", "samples/1")}
    (wav_bytes, label), (_, no_label) = (clips[tag].tensor_proto.string_val for tag in ("samples/0", "samples/1"))
    assert wav_bytes[:4] == b"RIFF" and label == b"[0] Marie aime les pommes." and no_label == b""
    assert clips["samples/0"].step == 20
    assert events.SummaryMetadata("samples/0").plugin_data.plugin_name == "audio"
    texts = {
        tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
        for tag in events.Tags()["tensors"]
        if tag.endswith("text_summary")
    }
    assert texts["samples/0/text_summary"] == "[0] Marie aime les pommes."
    assert RECIPE_TOML in texts["recipe/text_summary"] and texts["recipe/text_summary"].startswith("```toml")


def test_tensorboard_hparams_are_flattened_and_final_metrics_recorded(tmp_path):
    logger = TensorBoardLogger(TensorBoardOptions(subdir="tb"), tmp_path / "run")
    logger.begin(RUN)
    logger.log_scalars(100, {"train/loss": 1.0})
    logger.log_hparams({"train.lr": 3e-5, "train.seed": 1, "model.config": "tiny"}, {"best_val_loss": 1.25})
    logger.close()
    events = read_events(tmp_path / "run" / "tb" / "run")
    (final,) = events.Scalars("summary/best_val_loss")
    assert (final.step, final.value) == (100, 1.25)
    start = events.SummaryMetadata("_hparams_/session_start_info").plugin_data
    hparams = HParamsPluginData.FromString(start.content).session_start_info.hparams
    assert start.plugin_name == "hparams"
    assert {name: value.WhichOneof("kind") for name, value in hparams.items()} == {
        "train.lr": "number_value",
        "train.seed": "number_value",
        "model.config": "string_value",
    }


def test_flatten_keeps_only_values_tensorboard_accepts():
    tree = {"train": {"lr": 3e-5, "steps": 10, "bf16": True}, "model": {"config": "tiny"}, "plugins": [], "x": None}
    assert flatten(tree) == {"train.lr": 3e-5, "train.steps": 10, "train.bf16": True, "model.config": "tiny"}


def test_tensorboard_resume_drops_events_logged_after_the_checkpoint(tmp_path):
    first = TensorBoardLogger(TensorBoardOptions(), tmp_path)
    first.begin(RUN)
    for step in (10, 20, 30):
        first.log_scalars(step, {"train/loss": float(step)})
    first.close()  # killed after step 30; the last checkpoint was at step 20
    resumed = TensorBoardLogger(TensorBoardOptions(), tmp_path)
    resumed.begin(RunInfo(total_steps=100, start_step=20, recipe={}, recipe_toml=""))
    resumed.log_scalars(30, {"train/loss": 29.0})
    resumed.close()
    events = read_events(tmp_path / "tensorboard" / tmp_path.name)
    steps = [(e.step, e.value) for e in events.Scalars("loss/train")]
    assert steps == [(10, 10.0), (20, 20.0), (30, 29.0)]


def console_logger(force_terminal: bool) -> tuple[ConsoleLogger, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=force_terminal, width=120, color_system=None)
    return ConsoleLogger(ConsoleOptions(), Path("runs/x"), console=console), out


def test_console_renders_a_validation_table_with_an_accuracy_summary():
    logger, out = console_logger(force_terminal=False)
    logger.begin(RUN)
    logger.log_scalars(50, val_scalars(2.2))
    logger.close()
    text = out.getvalue()
    assert "validation at step 50" in text
    for row in ("loss  ", "loss_c0", "loss_decoder", "2.2000", "1.5000", "2.5000"):
        assert row in text
    assert "acc c0" in text and "0.500" in text
    assert "acc c1..c31 (mean)" in text and "0.250" in text
    assert "acc/c07" not in text  # folded into the summary, not 32 rows


def test_console_without_a_terminal_prints_one_readable_line_per_logged_step():
    logger, out = console_logger(force_terminal=False)
    logger.begin(RunInfo(total_steps=100, start_step=40, recipe={}, recipe_toml=""))
    logger.log_scalars(
        50, {"train/loss": 2.34567, "train/lr": 3e-5, "train/frames_per_s": 1234.4, "train/grad_norm": 1}
    )
    logger.log_scalars(60, {"train/loss": 2.0, "train/lr": 3e-5, "train/frames_per_s": 1000.0})
    logger.log_audio(60, "samples/0", torch.zeros(36000), 24000)
    logger.log_text(60, "samples/0", "Bonjour.")
    logger.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "training for 100 steps, resuming after step 40; logs in runs/x"
    assert lines[1].startswith("step 50/100  loss 2.3457  lr 3.00e-05  1234 frames/s")
    assert lines[2].startswith("step 60/100  loss 2.0000")
    assert lines[3:] == ["step 60: samples/0: 1.5 s of audio", "step 60: samples/0: Bonjour."]
    assert "\x1b" not in out.getvalue()  # no cursor control codes in a log file


def test_console_on_a_terminal_draws_a_progress_bar():
    logger, out = console_logger(force_terminal=True)
    logger.begin(RUN)
    logger.log_scalars(25, {"train/loss": 1.5, "train/lr": 1e-4, "train/frames_per_s": 99.0})
    logger.close()
    text = out.getvalue()
    assert "25/100" in text and "loss 1.5000" in text and "99 frames/s" in text
    assert "step 25/100  loss" not in text  # the bar, not the plain log line


def test_console_options_reject_a_non_positive_refresh_rate():
    with pytest.raises(ConfigError, match="loggers.0.refresh_per_second: must be > 0, got 0"):
        from_dict(ConsoleOptions, {"refresh_per_second": 0}, "loggers.0")


def test_jsonl_lines_parse(tmp_path):
    logger = JsonlLogger(NoOptions(), tmp_path)
    logger.begin(RUN)
    logger.log_scalars(5, {"train/loss": 2.5, "train/acc/c00": 0.125})
    logger.log_scalars(10, {"val/loss": 3})
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["name"], r["value"]) for r in records] == [
        (5, "train/loss", 2.5),
        (5, "train/acc/c00", 0.125),
        (10, "val/loss", 3.0),
    ]


def test_jsonl_after_a_resume_holds_each_step_once(tmp_path):
    """A run killed after logging steps 5-15 and resumed from its step-10 checkpoint: the file must
    read 5, 10, 15, 20 like an uninterrupted run's, not 5, 10, 15, 15, 20."""
    first = JsonlLogger(NoOptions(), tmp_path)
    first.begin(RUN)
    for step in (5, 10, 15):
        first.log_scalars(step, {"train/loss": 10.0 / step})
    first._file.write('{"step": 20, "time": 1, "na')  # the kill cut the last line short
    first.close()
    resumed = JsonlLogger(NoOptions(), tmp_path)
    resumed.begin(attrs.evolve(RUN, start_step=10))
    for step in (15, 20):
        resumed.log_scalars(step, {"train/loss": 10.0 / step})
    resumed.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["value"]) for r in records] == [(s, 10.0 / s) for s in (5, 10, 15, 20)]

    fresh = JsonlLogger(NoOptions(), tmp_path)  # a new run (nothing to resume) starts a new file
    fresh.begin(RUN)
    fresh.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_audio_descriptions_reach_old_and_new_loggers(tmp_path):
    from csm_adapt.plugin_api import Logger
    from csm_adapt.training.loggers import LoggerFanOut

    class Old(Logger):
        """Written before log_audio took a description."""

        def __init__(self):
            self.calls = []

        def log_audio(self, step, tag, wav, sample_rate):
            self.calls.append(("audio", step, tag))

        def log_text(self, step, tag, text):
            self.calls.append(("text", step, tag, text))

    old = Old()
    board = TensorBoardLogger(TensorBoardOptions(), tmp_path)
    board.begin(RUN)
    fan_out = LoggerFanOut([old, board])
    fan_out.log_audio(4, "eval/p1", torch.zeros(2400), 24000, description="Bonjour Marie.")
    fan_out.log_audio(4, "eval/p2", torch.zeros(0), 24000)  # empty audio: a model that stopped at once
    fan_out.close()
    assert old.calls == [("audio", 4, "eval/p1"), ("text", 4, "eval/p1", "Bonjour Marie."), ("audio", 4, "eval/p2")]
    events = read_events(board.events_dir)
    assert events.SummaryMetadata("eval/p1").summary_description == "Bonjour Marie."
    assert [e.step for e in events.Tensors("eval/p2")] == [4]
