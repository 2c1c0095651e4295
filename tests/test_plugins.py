"""Plugin discovery, registration, precedence, blocking and the hook docs."""

from __future__ import annotations

import inspect
import json
import re
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest

from csm_adapt.errors import PluginError
from csm_adapt.plugin_api import NoOptions, RunInfo
from csm_adapt.plugin_engine import hookspecs as hooks
from csm_adapt.plugin_engine.manager import BLOCK_ENV, load_plugins
from csm_adapt.plugin_engine.registries import collect

VALID_HOOKS = ", ".join(hooks.hook_names())

DOCS = Path(__file__).parents[1] / "docs" / "plugins.md"


def write_plugin(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("import attrs\nimport click\nfrom csm_adapt import hookimpl\n\n" + textwrap.dedent(body))
    return str(path)


READER = """
@attrs.frozen
class Options:
    root: str = "."

class Reader:
    def __init__(self, options):
        self.options = options

@hookimpl
def register_dataset_readers(register):
    register("{name}", Reader, options=Options)
"""


def registries_for(*local: str, cli: click.Group | None = None):
    pm = load_plugins(local)
    return pm, collect(pm, cli or click.Group())


def test_builtin_logger_comes_from_its_entry_point():
    pm, registries = registries_for()
    entry = registries.loggers.entries["jsonl"]
    assert entry.plugin == "jsonl_logger"
    assert entry.options is NoOptions
    info = next(i for i in pm.infos() if i.name == "jsonl_logger")
    assert info.source == "csm-adapt"


def test_local_file_plugin_registers_after_installed_ones(tmp_path):
    path = write_plugin(tmp_path, "mine", READER.format(name="mine"))
    pm, registries = registries_for(path)
    assert registries.readers.entries["mine"].plugin == "mine"
    names = [info.name for info in pm.infos()]
    assert names.index("jsonl_logger") < names.index("mine")
    assert pm.infos()[-1].version == "local" and pm.infos()[-1].source == path


def test_local_module_plugin(tmp_path, monkeypatch):
    write_plugin(tmp_path, "module_reader", READER.format(name="modular"))
    monkeypatch.syspath_prepend(str(tmp_path))
    _, registries = registries_for("module_reader")
    assert registries.readers.entries["modular"].plugin == "module_reader"


def test_duplicate_name_names_both_plugins(tmp_path):
    first = write_plugin(tmp_path, "first", READER.format(name="same"))
    second = write_plugin(tmp_path, "second", READER.format(name="same"))
    with pytest.raises(PluginError, match="reader 'same' is registered by two plugins: first and second"):
        registries_for(first, second)


def test_two_local_plugin_files_with_the_same_name_are_refused_naming_both(tmp_path):
    first = write_plugin(tmp_path / "a", "mine", READER.format(name="one"))
    second = write_plugin(tmp_path / "b", "mine", READER.format(name="two"))
    with pytest.raises(PluginError, match=f'two plugins are named "mine": {second} and {first}'):
        registries_for(first, second)


def test_duplicate_of_a_builtin_name_is_an_error_unless_the_builtin_is_blocked(tmp_path, monkeypatch):
    logger = write_plugin(
        tmp_path,
        "my_jsonl",
        """
        @hookimpl
        def register_loggers(register):
            register("jsonl", object)
        """,
    )
    with pytest.raises(PluginError, match="logger 'jsonl' is registered by two plugins: jsonl_logger and my_jsonl"):
        registries_for(logger)
    monkeypatch.setenv(BLOCK_ENV, "jsonl_logger")
    _, registries = registries_for(logger)
    assert registries.loggers.entries["jsonl"].plugin == "my_jsonl"


def test_blocked_plugins_are_not_imported(tmp_path, monkeypatch):
    path = write_plugin(tmp_path, "broken", "raise RuntimeError('imported')\n")
    builtins = [ep.name for ep in entry_points(group="csm_adapt")]
    monkeypatch.setenv(BLOCK_ENV, " broken , " + ",".join(builtins))
    pm, registries = registries_for(path)
    names = [info.name for info in pm.infos()]
    assert "broken" not in names and "jsonl_logger" not in names
    assert "jsonl" not in registries.loggers.entries


def test_misspelt_hook_fails_naming_the_plugin(tmp_path):
    path = write_plugin(
        tmp_path,
        "typo",
        """
        @hookimpl
        def register_dataset_reader(register):
            pass
        """,
    )
    with pytest.raises(
        PluginError,
        match=rf"plugin typo \(.*typo.py\): unknown hook register_dataset_reader; valid hooks: {VALID_HOOKS}$",
    ):
        registries_for(path)


def test_hook_with_a_wrong_argument_fails_naming_the_plugin(tmp_path):
    path = write_plugin(
        tmp_path,
        "badarg",
        """
        @hookimpl
        def register_loggers(registr):
            pass
        """,
    )
    with pytest.raises(PluginError, match="badarg.*registr"):
        registries_for(path)


def test_missing_file_and_module_are_reported(tmp_path):
    with pytest.raises(PluginError, match="plugin file not found: .*nowhere.py"):
        registries_for(str(tmp_path / "nowhere.py"))
    with pytest.raises(PluginError, match='plugin module "no_such_module_xyz" cannot be imported'):
        registries_for("no_such_module_xyz")


def test_options_must_be_an_attrs_class(tmp_path):
    path = write_plugin(
        tmp_path,
        "plain",
        """
        @hookimpl
        def register_loss_strategies(register):
            register("plain", object, options=dict)
        """,
    )
    with pytest.raises(PluginError, match="plugin plain: options of loss strategy 'plain' must be an attrs class"):
        registries_for(path)


COMMAND = """
@hookimpl
def register_commands(cli):
    @cli.command("{command}")
    def command():
        "Say hello."
        click.echo("hello")
"""


def test_plugin_commands_are_added_and_recorded(tmp_path):
    group = click.Group(commands={"validate": click.Command("validate")})
    path = write_plugin(tmp_path, "greeter", COMMAND.format(command="hello"))
    _, registries = registries_for(path, cli=group)
    # Installed plugins may add commands of their own; these two are the test's.
    assert {name: registries.commands[name] for name in ("validate", "hello")} == {
        "validate": "csm_adapt",
        "hello": "greeter",
    }
    assert "hello" in group.commands


def test_plugin_command_clashing_with_a_core_command_names_both(tmp_path):
    group = click.Group(commands={"validate": click.Command("validate")})
    path = write_plugin(tmp_path, "clash", COMMAND.format(command="validate"))
    with pytest.raises(PluginError, match="command 'validate' is registered by two plugins: csm_adapt and clash"):
        registries_for(path, cli=group)


def test_jsonl_logger_writes_one_line_per_scalar(tmp_path):
    _, registries = registries_for()
    entry = registries.loggers.entries["jsonl"]
    logger = entry.implementation(entry.options(), tmp_path / "run")
    logger.begin(RunInfo(total_steps=3, start_step=0, recipe={}, recipe_toml=""))
    logger.log_scalars(3, {"loss": 1.5, "lr": 2e-5})
    logger.log_text(3, "note", "ignored by this logger")
    logger.close()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["name"], r["value"]) for r in lines] == [(3, "loss", 1.5), (3, "lr", 2e-5)]
    assert all(isinstance(r["time"], float) for r in lines)


@pytest.mark.parametrize("name", hooks.hook_names())
def test_every_hook_is_documented_with_its_signature(name):
    signature = f"{name}({', '.join(inspect.signature(getattr(hooks, name)).parameters)})"
    headings = re.findall(r"^### `(.+)`$", DOCS.read_text(), flags=re.MULTILINE)
    assert signature in headings, f"docs/plugins.md has no '### `{signature}`' section"


def test_register_function_without_hookimpl_is_an_error_at_load(tmp_path):
    path = write_plugin(
        tmp_path,
        "unmarked",
        """
        def register_dataset_readers(register):
            register("unmarked", object)
        """,
    )
    with pytest.raises(
        PluginError,
        match=r"plugin unmarked \(.*unmarked.py\): function register_dataset_readers has no @hookimpl, .*"
        r"decorate it with @hookimpl \(from csm_adapt import hookimpl\)",
    ):
        registries_for(path)


@pytest.mark.parametrize(
    ("annotation", "shown"),
    [("set[str]", "set[str]"), ("frozenset | None", "frozenset"), ("list[complex]", "complex")],
)
def test_options_field_of_a_type_no_recipe_can_give_is_an_error_at_load(tmp_path, annotation, shown):
    path = write_plugin(
        tmp_path,
        "settish",
        f"""
        @attrs.frozen
        class Options:
            root: str = "."
            tags: {annotation} = None

        @hookimpl
        def register_dataset_readers(register):
            register("settish", object, options=Options)
        """,
    )
    with pytest.raises(
        PluginError,
        match=rf"plugin settish: options of reader 'settish': field `tags` has type {re.escape(shown)}, "
        "which a recipe cannot give; a recipe can give str, int",
    ):
        registries_for(path)


def test_nested_options_class_is_checked_too(tmp_path):
    path = write_plugin(
        tmp_path,
        "nested",
        """
        @attrs.frozen
        class Inner:
            when: bytes = b""

        @attrs.frozen
        class Options:
            inner: Inner = Inner()

        @hookimpl
        def register_loggers(register):
            register("nested", object, options=Options)
        """,
    )
    with pytest.raises(PluginError, match="field `inner.when` has type bytes"):
        registries_for(path)
