"""Output for terminals, logs and pipes (issue 14, items 5 and 11): nothing wrapped, progress as it
happens, and `run`'s closing list of what it wrote, which README.md shows for the demo."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from csm_adapt.cli import cli
from csm_adapt.config import toml_io
from csm_adapt.run_report import format_report, run_report
from csm_adapt.terminal import Progress, make_console

REPO = Path(__file__).parents[1]

RECIPE = """
plugins = ["toy.py"]
[model]
text_tokenizer = "offline"
audio_codec = "offline"
[data]
out = "{deep}/prepared"
[data.reader]
name = "toy"
[loss]
strategy = "toy"
[output]
run_dir = "{deep}/run"
"""

TOY_PLUGIN = """
from csm_adapt import hookimpl


class Toy:
    def __init__(self, options):
        self.options = options

@hookimpl
def register_dataset_readers(register):
    register("toy", Toy)

@hookimpl
def register_loss_strategies(register):
    register("toy", Toy)
"""


@pytest.fixture
def long_recipe(tmp_path):
    """A recipe whose paths are far longer than 80 columns."""
    deep = tmp_path / ("a-folder-with-a-rather-long-name-" * 4) / "and-deeper"
    (tmp_path / "toy.py").write_text(TOY_PLUGIN)
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.format(deep=deep))
    return path, deep


def test_validate_output_piped_is_valid_toml_and_keeps_long_paths_whole(long_recipe):
    path, deep = long_recipe
    result = CliRunner().invoke(cli, ["validate", str(path)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    printed = result.output.rsplit("\n", 2)[0]  # all but "... is valid"
    assert toml_io.loads(printed)["output"]["run_dir"] == str(deep / "run")
    assert f'run_dir = "{deep / "run"}"' in result.output.splitlines()


def test_progress_prints_plain_lines_with_rate_and_eta_when_not_a_terminal(monkeypatch):
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr("csm_adapt.terminal.time.monotonic", lambda: float(next(clock)))
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=40)
    with Progress(console, 8, unit="samples", description="prepare train-000000.tar", every_s=10) as progress:
        for _ in range(16):
            progress.advance(0.5)
    lines = out.getvalue().splitlines()
    assert lines[0] == "prepare train-000000.tar: 1/8 samples (12%), 0.1 samples/s, 0:01:10 left"
    assert all(len(line) > 40 for line in lines)  # never cut at the console's width
    assert lines[-1].startswith("prepare train-000000.tar: 8/8 samples (100%) in ")
    assert len(lines) == 9  # a line each 10 s (each second advance here), and the last one


def test_progress_draws_a_bar_and_no_lines_in_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with Progress(console, 4, unit="samples", description="prepare", every_s=0) as progress:
        progress.advance(1.5)
        progress.advance(2.5)
    assert "4/4 samples" in out.getvalue() and "100%" in out.getvalue()
    assert " left" not in out.getvalue() and " in 0:00" not in out.getvalue()  # no plain lines


def fake_run(run_dir: Path, data_dir: Path) -> Path:
    """The files the demo run leaves (300 steps, checkpoint every 100, keep 2, samples every 150)."""
    (run_dir / "recipe.toml").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.toml").write_text("")
    for name in ("index.json", "rejects.jsonl", "train-000000.tar"):
        (data_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / name).write_text("")
    for name in ("step-000200", "step-000300", "best", "final"):
        (run_dir / "checkpoints" / name).mkdir(parents=True)
    for step in ("step-000150", "step-000300"):
        (run_dir / "samples" / step).mkdir(parents=True)
        (run_dir / "samples" / step / "0.wav").write_text("")
    (run_dir / "metrics.jsonl").write_text("")
    (run_dir / "tensorboard").mkdir()
    return run_dir / "checkpoints" / "final"


def readme_run_listing() -> list[str]:
    """The block after 'prints where everything went' in README.md."""
    readme = (REPO / "README.md").read_text("utf-8")
    block = re.search(r"prints where everything went:\n\n```\n(.*?)```", readme, re.S)
    assert block, "README.md lost its list of what the demo run writes"
    return block.group(1).splitlines()


def test_readme_lists_exactly_what_the_demo_run_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_run(Path("runs/demo"), Path("runs/demo/data"))
    assert format_report(run_report(Path("runs/demo"), Path("runs/demo/data"))) == readme_run_listing()


def test_run_prints_where_everything_went_and_the_recipe_only_when_verbose(long_recipe, monkeypatch, tmp_path):
    path, deep = long_recipe
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("csm_adapt.data.prepare.prepare", lambda data, model, **kwargs: {})
    monkeypatch.setattr(
        "csm_adapt.training.loop.train", lambda recipe, resume: fake_run(deep / "run", deep / "prepared")
    )
    quiet = CliRunner().invoke(cli, ["run", str(path)], env={"COLUMNS": "80"})
    assert quiet.exit_code == 0, quiet.output
    assert "[train]" not in quiet.output
    lines = quiet.output.splitlines()
    assert lines[0] == f"resolved recipe saved to {deep / 'run' / 'recipe.toml'}"
    final = Path(deep.relative_to(tmp_path)) / "run" / "checkpoints" / "final"
    assert lines[1] == f"done. final model: {final}"
    assert any(line.startswith(f"{final}/") and line.endswith("the model at the end") for line in lines)
    assert lines[-1] == f'speak with: csm-adapt generate --model {final} --text "..." --out out.wav'
    # Into a fresh run directory: the first one now holds a run, which only --resume may continue.
    again = f"output.run_dir={tmp_path / 'again'}"
    verbose = CliRunner().invoke(cli, ["run", str(path), "--verbose", again], env={"COLUMNS": "80"})
    assert "[train]" in verbose.output


@pytest.mark.skipif(sys.platform == "win32", reason="paths")
def test_make_console_never_wraps():
    out = io.StringIO()
    console = make_console(file=out, force_terminal=False, width=20)
    console.print("csm-adapt generate --model /a/very/long/path/to/checkpoints/final --text hi")
    assert out.getvalue().count("\n") == 1
