"""Recipes: schema, plugin options, overrides, error messages and the saved resolved recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
import pytest

from csm_adapt.config.overrides import apply_overrides, parse_value
from csm_adapt.config.recipe import SAVED_NAME, load_recipe, recipe_to_dict, save_recipe
from csm_adapt.config.schema import TrainConfig
from csm_adapt.config.structure import from_dict, to_dict
from csm_adapt.errors import ConfigError
from csm_adapt.plugin_api import RunInfo

# Every key of [train], in declaration order, as the unknown-key message lists them.
TRAIN_KEYS = ", ".join(f.name for f in attrs.fields(TrainConfig))

TOY_PLUGIN = """
from pathlib import Path
import attrs
from csm_adapt import hookimpl


@attrs.frozen
class ToyOptions:
    root: Path
    limit: int = 10

class ToyReader:
    def __init__(self, options):
        self.options = options

@attrs.frozen
class SimpleOptions:
    weight: float = 1.0

class Simple:
    def __init__(self, options):
        self.options = options

@hookimpl
def register_dataset_readers(register):
    register("toy", ToyReader, options=ToyOptions)

@hookimpl
def register_loss_strategies(register):
    register("simple", Simple, options=SimpleOptions)
"""

RECIPE = """
plugins = ["plugins/toy.py"]

[data]
out = "prepared"

[data.reader]
name = "toy"
root = "/data/toy"

[loss]
strategy = "simple"

[[loggers]]
name = "jsonl"

[[samples.prompts]]
text = "Bonjour."

[[samples.prompts]]
text = "Salut."
speaker = 1

[output]
run_dir = "runs/toy"
"""


@pytest.fixture
def recipe_path(tmp_path, monkeypatch) -> Path:
    """A recipe in tmp/recipes/ whose local plugin is in tmp/recipes/plugins/; cwd is tmp/work."""
    (tmp_path / "recipes" / "plugins").mkdir(parents=True)
    (tmp_path / "recipes" / "plugins" / "toy.py").write_text(TOY_PLUGIN)
    path = tmp_path / "recipes" / "toy.toml"
    path.write_text(RECIPE)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return path


def test_load_recipe_builds_tables_plugins_and_defaults(recipe_path, tmp_path):
    recipe = load_recipe(recipe_path)
    assert recipe.plugins == (str(tmp_path / "recipes" / "plugins" / "toy.py"),)  # relative to the recipe
    assert recipe.data.out == tmp_path / "work" / "prepared"  # other paths: relative to cwd
    assert recipe.data.reader.name == "toy"
    assert recipe.data.reader.options.root == Path("/data/toy")
    assert recipe.data.reader.options.limit == 10
    reader = recipe.data.reader.create()
    assert reader.options is recipe.data.reader.options
    assert recipe.loss.create().options.weight == 1.0
    assert [ref.name for ref in recipe.loggers] == ["jsonl"]
    assert [(p.text, p.speaker) for p in recipe.samples.prompts] == [("Bonjour.", 0), ("Salut.", 1)]
    assert recipe.model.config == "csm-1b" and recipe.train.lr == 3e-5


def test_logger_ref_creates_a_logger_in_the_run_dir(recipe_path):
    recipe = load_recipe(recipe_path)
    logger = recipe.loggers[0].create(recipe.output.run_dir)
    logger.begin(RunInfo(total_steps=1, start_step=0, recipe={}, recipe_toml=""))
    logger.log_scalars(1, {"loss": 2.0})
    logger.close()
    assert (recipe.output.run_dir / "metrics.jsonl").read_text().count("\n") == 1


def test_saved_recipe_reloads_identical_from_anywhere(recipe_path, tmp_path, monkeypatch):
    recipe = load_recipe(recipe_path, ["train.lr=1e-4", "data.reader.limit=3"])
    saved = save_recipe(recipe)
    assert saved == tmp_path / "work" / "runs" / "toy" / SAVED_NAME
    monkeypatch.chdir(tmp_path)
    reloaded = load_recipe(saved)
    assert reloaded == recipe
    assert recipe_to_dict(reloaded) == recipe_to_dict(recipe)
    assert reloaded.train.lr == 1e-4 and reloaded.data.reader.options.limit == 3


def test_overrides_nested_keys_lists_and_indexes(recipe_path):
    recipe = load_recipe(
        recipe_path,
        [
            "train.lr=3e-4",
            "train.seed=7",
            "data.reader.root=/other/place",  # bare string: not a TOML literal
            "data.reader.limit=5",
            "samples.prompts.1.speaker=4",
            "loss.weight=2",  # int literal for a float option
        ],
    )
    assert recipe.train.lr == 3e-4 and recipe.train.seed == 7
    assert recipe.data.reader.options.root == Path("/other/place")
    assert recipe.data.reader.options.limit == 5
    assert recipe.samples.prompts[1].speaker == 4
    assert recipe.loss.options.weight == 2.0
    replaced = load_recipe(recipe_path, ['samples.prompts=[{text="a"}, {text="b", speaker=2}]'])
    assert [(p.text, p.speaker) for p in replaced.samples.prompts] == [("a", 0), ("b", 2)]
    assert load_recipe(recipe_path, ["loggers=[]"]).loggers == ()


def test_override_values_are_toml_literals_or_strings():
    assert parse_value("3e-5") == 3e-5
    assert parse_value("true") is True
    assert parse_value('"quoted text"') == "quoted text"
    assert parse_value("/data/siwis") == "/data/siwis"
    assert parse_value('["a", "b"]') == ["a", "b"]
    assert parse_value("{name = 'x'}") == {"name": "x"}


def test_overrides_create_missing_tables_and_leave_the_input_alone():
    raw = {"train": {"lr": 1.0}}
    assert apply_overrides(raw, ["train.lr=2.0", "model.config=tiny"]) == {
        "train": {"lr": 2.0},
        "model": {"config": "tiny"},
    }
    assert raw == {"train": {"lr": 1.0}}


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainlr", 'override "trainlr": expected key=value'),
        ("samples.prompts.5.text=x", "samples.prompts.5: no item 5 in an array of 2"),
        ("train.lr.x=1", "train.lr is not a table"),
    ],
)
def test_bad_overrides(override, message):
    raw = {"train": {"lr": 1.0}, "samples": {"prompts": [{}, {}]}}
    with pytest.raises(ConfigError, match=message):
        apply_overrides(raw, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.lrr=1",
            f"train.lrr: unknown key; valid keys: {TRAIN_KEYS}",
        ),
        ("train.lr=abc", 'train.lr: expected float, got str "abc"'),
        ("train.steps=1.5", "train.steps: expected int, got float 1.5"),
        ("train.steps=0", "train.steps: must be > 0, got 0"),
        ("train=3", "train: expected a table, got int 3"),
        (
            "data.reader.name=toyy",
            'data.reader.name: unknown reader "toyy"; available: conversation, hf_datasets, json, ljspeech, toy',
        ),
        ("loss.strategy=nope", 'loss.strategy: unknown loss strategy "nope"; available: amortized, full, simple'),
        ('loggers=[{name="tb"}]', 'loggers.0.name: unknown logger "tb"; available: console, jsonl, tensorboard'),
        ("loggers.0.every=3", "loggers.0.every: unknown key; valid keys: \\(none\\)"),
        ("data.reader.limit=many", 'data.reader.limit: expected int, got str "many"'),
        ("data.reader.colour=1", "data.reader.colour: unknown key; valid keys: root, limit"),
        ("data.reader.root=3", "data.reader.root: expected str \\(a path\\), got int 3"),
        ("data.reader.name=true", "data.reader.name: expected str, got bool True"),
        ("loss.weight=[1]", "loss.weight: expected float, got array"),
        ("samples.prompts=[{speaker=1}]", "samples.prompts.0.text: missing required key"),
        ("samples.prompts.0.speaker=false", "samples.prompts.0.speaker: expected int, got bool False"),
        ("model.config=huge", 'model.config: unknown model config "huge"; available: csm-1b'),
        ("model.checkpoint=./missing", 'model.checkpoint: "./missing" is neither an existing path, a hub id'),
        ("data.val_fraction=1.5", "data.val_fraction: must be in \\[0, 1\\), got 1.5"),
        ("plugins=3", "plugins: expected an array, got int 3"),
        ("train.rows_per_micro_batch=999999", r"train.rows_per_micro_batch: 999999 is larger than train.rows_per_"),
        ('data.on_corrupt="ignore"', r"data.on_corrupt: expected one of"),
        ("data.min_clip_seconds=-1", r"data.min_clip_seconds: must be >= 0, got -1"),
    ],
)
def test_bad_recipe_errors_name_the_file_and_key(recipe_path, override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_recipe(recipe_path, [override])
    assert str(caught.value).startswith(f"{recipe_path}: ")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('[output]\nrun_dir = "runs/toy"\n', "", "output: missing required key"),
        ('name = "toy"\n', "", "data.reader.name: missing required key"),
        ('strategy = "simple"\n', "", "loss.strategy: missing required key"),
    ],
)
def test_missing_tables_and_plugin_names(recipe_path, old, new, message):
    recipe_path.write_text(RECIPE.replace(old, new))
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe_path)


def test_unreadable_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="nothing.toml: no such file"):
        load_recipe(tmp_path / "nothing.toml")
    (tmp_path / "broken.toml").write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="broken.toml: invalid TOML"):
        load_recipe(tmp_path / "broken.toml")


@attrs.frozen
class Inner:
    mode: Literal["fast", "slow"] = "fast"
    scale: float = 1.0


@attrs.frozen
class Outer:
    inner: Inner = attrs.field(factory=Inner)
    counts: dict[str, int] = attrs.field(factory=dict)
    names: tuple[str, ...] = ()
    note: str | None = None
    either: int | str = 0
    where: Path | None = None


def test_from_dict_types_and_round_trip():
    built = from_dict(
        Outer,
        {"inner": {"mode": "slow", "scale": 2}, "counts": {"a": 1}, "names": ["x"], "either": "s", "where": "rel"},
    )
    assert built == Outer(Inner("slow", 2.0), {"a": 1}, ("x",), None, "s", Path.cwd() / "rel")
    assert isinstance(built.inner.scale, float)
    assert to_dict(built) == {
        "inner": {"mode": "slow", "scale": 2.0},
        "counts": {"a": 1},
        "names": ["x"],
        "either": "s",
        "where": str(Path.cwd() / "rel"),
    }
    assert from_dict(Outer, to_dict(built)) == built


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"mode": "medium"}}, 'cfg.inner.mode: expected one of "fast", "slow"; got str "medium"'),
        ({"counts": {"a": "1"}}, 'cfg.counts.a: expected int, got str "1"'),
        ({"names": ["x", 2]}, "cfg.names.1: expected str, got int 2"),
        ({"either": 1.5}, "cfg.either: expected int or str, got float 1.5"),
        ({"inner": {"scale": True}}, "cfg.inner.scale: expected float, got bool True"),
    ],
)
def test_from_dict_errors_name_the_key_path(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, "cfg")
