"""`csm-adapt recipes` lists the shipped recipes; `recipes copy` copies one, with what it reads, to
edit (issue 14, item 15)."""

from __future__ import annotations

from click.testing import CliRunner

from csm_adapt.cli import cli
from csm_adapt.commands.recipes import shipped


def test_recipes_lists_each_shipped_recipe_with_its_description():
    result = CliRunner().invoke(cli, ["recipes"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "demo          Offline demo: everything needed ships with csm-adapt, nothing is downloaded."
    assert lines[1].startswith("french-lora   Finetune CSM-1B with LoRA on a French speech set, on a 16 GB card")
    assert lines[2].startswith("french-qlora  Finetune CSM-1B with QLoRA on a French speech set, on an 8 GB card")
    assert lines[3].startswith("french        Finetune CSM-1B on a French speech set in LJSpeech layout")
    assert set(shipped()) == {"demo", "french", "french-lora", "french-qlora"}


def test_every_shipped_recipe_loads_and_states_its_planned_memory():
    """Each recipe validates; a recipe sized for a card states the planner's figure, which is still true."""
    import re

    from csm_adapt.config.recipe import load_recipe
    from csm_adapt.memory.advice import CARDS, fits
    from csm_adapt.memory.plan import GIB, plan_memory

    for name, path in shipped().items():
        recipe = load_recipe(path)
        stated = re.search(r"^# Memory \(csm-adapt memory recipes/[\w-]+\.toml\): ([\d.]+) GiB", path.read_text(), re.M)
        card = re.search(r"on an? (\d+) GB card", path.read_text().splitlines()[0])
        if card is None:
            continue
        assert stated, f"{name}: sized for a card, but its header gives no planner figure"
        plan = plan_memory(recipe)
        assert float(stated.group(1)) == round(plan.total / GIB, 2), f"{name}: the header's figure is stale"
        assert fits(plan, dict(CARDS)[f"{card.group(1)} GB"])


def test_copy_makes_a_recipe_folder_that_validates_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["recipes", "copy", "demo", "mine"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine" / "demo.toml").read_text() == shipped()["demo"].read_text()
    assert len(list((tmp_path / "mine" / "demo_data" / "wavs").glob("*.wav"))) == 40
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    valid = runner.invoke(cli, ["validate", str(tmp_path / "mine" / "demo.toml")])
    assert valid.exit_code == 0, valid.output
    assert f'root = "{tmp_path / "mine" / "demo_data"}"' in valid.output


def test_copy_to_a_file_name_refuses_to_overwrite_and_names_the_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["recipes", "copy", "french", "fr/mine.toml"]).exit_code == 0
    assert (tmp_path / "fr" / "mine.toml").is_file() and list((tmp_path / "fr").iterdir()) == [
        tmp_path / "fr" / "mine.toml"
    ]
    again = runner.invoke(cli, ["recipes", "copy", "french", "fr/mine.toml"])
    assert again.exit_code == 2 and "fr/mine.toml already exists" in again.output
    unknown = runner.invoke(cli, ["recipes", "copy", "nope"])
    assert unknown.exit_code == 2 and 'no shipped recipe "nope"; available: demo, french' in unknown.output
