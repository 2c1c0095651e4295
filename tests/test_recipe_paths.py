"""One rule for the paths of a recipe (issue 14, item 8): what a recipe reads is relative to the
recipe's folder, what a run writes and what the command line gives are relative to where it runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from csm_adapt.cli import cli
from csm_adapt.config.recipe import load_recipe

REPO = Path(__file__).parents[1]

PLUGIN = """
from pathlib import Path
import attrs
from csm_adapt import hookimpl

@attrs.frozen
class Options:
    root: Path
    extra: Path | None = None

class Reader:
    def __init__(self, options):
        self.options = options

@hookimpl
def register_dataset_readers(register):
    register("here", Reader, options=Options)

@hookimpl
def register_loss_strategies(register):
    register("here", Reader)
"""

RECIPE = """
plugins = ["plugin/here.py"]
[model]
text_tokenizer = "tok/tokenizer.json"
audio_codec = "offline"
[data]
out = "out/data"
[data.reader]
name = "here"
root = "clips"
[loss]
strategy = "here"
[[samples.prompts]]
text = "Bonjour."
context = [{ speaker = 0, text = "Salut.", audio = "clips/a.wav" }]
[output]
run_dir = "out/run"
"""


def make_recipe_folder(root: Path) -> Path:
    (root / "plugin").mkdir(parents=True)
    (root / "plugin" / "here.py").write_text(PLUGIN)
    (root / "clips").mkdir()
    (root / "tok").mkdir()
    (root / "tok" / "tokenizer.json").write_text("{}")
    (root / "recipe.toml").write_text(RECIPE)
    return root / "recipe.toml"


def test_inputs_follow_the_recipe_outputs_and_overrides_the_working_directory(tmp_path, monkeypatch):
    recipe = make_recipe_folder(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "mine").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    resolved = load_recipe(Path("../project/recipe.toml"))
    folder = recipe.parent
    assert resolved.data.reader.options.root == folder / "clips"
    assert resolved.model.text_tokenizer == str(folder / "tok" / "tokenizer.json")
    assert resolved.samples.prompts[0].context[0].audio == folder / "clips" / "a.wav"
    assert resolved.plugins == (str(folder / "plugin" / "here.py"),)
    assert resolved.data.out == elsewhere / "out" / "data"
    assert resolved.output.run_dir == elsewhere / "out" / "run"

    overridden = load_recipe(recipe, ["data.reader.extra=mine", "data.reader={name='here', root='mine'}"])
    assert overridden.data.reader.options.root == elsewhere / "mine"
    moved = shutil.copytree(folder, tmp_path / "moved")  # the folder moved: its inputs move with it
    assert load_recipe(moved / "recipe.toml").data.reader.options.root == moved / "clips"


def test_a_hub_id_source_stays_a_hub_id(tmp_path, monkeypatch):
    recipe = make_recipe_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    resolved = load_recipe(recipe, ["model.text_tokenizer=owner/tokenizer"])
    assert resolved.model.text_tokenizer == "owner/tokenizer"


def test_the_demo_recipe_validates_from_any_folder_and_writes_under_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["validate", str(REPO / "recipes" / "demo.toml")])
    assert result.exit_code == 0, result.output
    resolved = load_recipe(REPO / "recipes" / "demo.toml")
    assert resolved.data.reader.options.root == REPO / "recipes" / "demo_data"
    assert resolved.output.run_dir == tmp_path / "runs" / "demo"


def test_changed_settings_are_what_hparams_compare_runs_by(tmp_path):
    from csm_adapt.config.recipe import changed_settings

    recipe = make_recipe_folder(tmp_path)
    settings = changed_settings(load_recipe(recipe, ["train.lr=1e-4", "train.steps=1000", "data.max_rows=512"]))
    assert settings == {
        "loss.strategy": "here",
        "model.text_tokenizer": str(tmp_path / "tok" / "tokenizer.json"),
        "model.audio_codec": "offline",
        "train.lr": 1e-4,
        "data.max_rows": 512,
    }  # train.steps=1000 is the default; paths, the reader and the prompts are left out
