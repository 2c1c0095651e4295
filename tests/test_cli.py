"""The command line: help everywhere, clean errors, `plugins` and `validate`."""

from __future__ import annotations

import json
import subprocess
import sys

import attrs
import pytest
from click.testing import CliRunner

import csm_adapt
from csm_adapt.cli import cli
from csm_adapt.config.schema import TrainConfig

# Every key of [train], in declaration order, as the unknown-key message lists them.
TRAIN_KEYS = ", ".join(f.name for f in attrs.fields(TrainConfig))

RECIPE = """
plugins = ["toy.py"]
[model]
text_tokenizer = "offline"
audio_codec = "offline"
[data]
out = "prepared"
[data.reader]
name = "toy"
[loss]
strategy = "toy"
[output]
run_dir = "runs/toy"
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
def recipe_path(tmp_path):
    (tmp_path / "toy.py").write_text(TOY_PLUGIN)
    path = tmp_path / "toy.toml"
    path.write_text(RECIPE)
    return path


@pytest.mark.parametrize("command", [[]] + [[name] for name in cli.commands])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:")


def test_validate_prints_the_resolved_recipe_and_writes_nothing(recipe_path, tmp_path):
    result = CliRunner().invoke(cli, ["validate", str(recipe_path), "train.lr=1e-4"])
    assert result.exit_code == 0, result.output
    assert "lr = 0.0001" in result.output
    assert 'strategy = "toy"' in result.output
    assert "is valid" in result.output
    assert not (tmp_path / "runs").exists()


def test_user_errors_are_one_clean_line_with_status_2(recipe_path):
    result = CliRunner().invoke(cli, ["validate", str(recipe_path), "train.lrr=1"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {recipe_path}: train.lrr: unknown key; valid keys: {TRAIN_KEYS}"
    assert "Traceback" not in result.output


def test_plugins_json_lists_each_plugin_with_what_it_registers(recipe_path):
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["jsonl_logger"] == {
        "name": "jsonl_logger",
        "version": csm_adapt.__version__,
        "source": "csm-adapt",
        "readers": [],
        "losses": [],
        "loggers": ["jsonl"],
        "adapters": [],
        "evaluators": [],
        "commands": [],
    }
    assert rows["lora_adapter"]["adapters"] == ["lora", "qlora"]
    assert rows["lora_adapter"]["commands"] == ["export-peft"]
    assert "toy" not in rows
    with_recipe = CliRunner().invoke(cli, ["plugins", "--json", "--recipe", str(recipe_path)])
    toy = {row["name"]: row for row in json.loads(with_recipe.output)}["toy"]
    assert (toy["version"], toy["source"]) == ("local", str(recipe_path.parent / "toy.py"))
    assert (toy["readers"], toy["losses"]) == (["toy"], ["toy"])


def test_plugins_table(recipe_path):
    result = CliRunner().invoke(cli, ["plugins", "--recipe", str(recipe_path)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "jsonl_logger" in result.output and "toy" in result.output


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "csm_adapt", "--version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"csm-adapt, version {csm_adapt.__version__}"
