"""An installed plugin that is broken must not take the CLI down (issue 14, item 1).

Each test installs a fake distribution (a `.dist-info` with an entry point, and its module) in a
temporary folder on the path, as pip would in site-packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import click
import pytest

from csm_adapt.errors import PluginError
from csm_adapt.plugin_engine.hookspecs import hook_names
from csm_adapt.plugin_engine.manager import BLOCK_ENV, load_plugins
from csm_adapt.plugin_engine.registries import collect

RECIPE = """
[model]
text_tokenizer = "offline"
audio_codec = "offline"
[data]
out = "prepared"
[data.reader]
name = "json"
path = "clips.json"
[loss]
strategy = "full"
[output]
run_dir = "runs/x"
"""

BROKEN_IMPORT = "import no_such_dependency_xyz\n"
MISSPELT_HOOK = """
from csm_adapt import hookimpl

@hookimpl
def register_dataset_reader(register):
    pass
"""
FAILING_HOOK = """
from csm_adapt import hookimpl

@hookimpl
def register_loggers(register):
    register("half", object)
    raise RuntimeError("the logger's config file is missing")
"""


def install_fake(site, module: str, body: str, dist: str = "csm-adapt-fake", version: str = "1.2.3") -> None:
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[csm_adapt]\n{module} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(body))


def cli(tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if key != BLOCK_ENV}
    env = {**base, "PYTHONPATH": str(tmp_path / "site"), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "csm_adapt", *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )


@pytest.fixture
def broken_site(tmp_path):
    install_fake(tmp_path / "site", "fake_broken_import", BROKEN_IMPORT)
    (tmp_path / "recipe.toml").write_text(RECIPE)
    (tmp_path / "clips.json").write_text("[]")
    return tmp_path


def test_help_version_and_plugins_work_and_list_the_broken_plugin(broken_site):
    assert cli(broken_site, "--help").returncode == 0
    assert cli(broken_site, "validate", "--help").returncode == 0
    version = cli(broken_site, "--version")
    assert version.returncode == 0 and "csm-adapt, version" in version.stdout
    listed = cli(broken_site, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert "jsonl_logger" in rows  # the healthy plugins are still there
    broken = rows["fake_broken_import"]
    assert (broken["source"], broken["version"]) == ("csm-adapt-fake", "1.2.3")
    assert "ModuleNotFoundError: No module named 'no_such_dependency_xyz'" in broken["error"]
    table = cli(broken_site, "plugins")
    assert table.returncode == 0 and "BROKEN" in table.stdout and "fake_broken_import" in table.stdout


def test_other_commands_fail_with_one_line_naming_distribution_entry_point_and_the_way_out(broken_site):
    result = cli(broken_site, "validate", "recipe.toml")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "error: installed plugin fake_broken_import (distribution csm-adapt-fake 1.2.3, entry point "
        "'fake_broken_import = fake_broken_import' in group 'csm_adapt') is broken: ModuleNotFoundError: "
    )
    assert result.stderr.rstrip().endswith(f"or skip it: {BLOCK_ENV}=fake_broken_import")
    unblocked = cli(broken_site, "validate", "recipe.toml", env={BLOCK_ENV: "fake_broken_import"})
    assert unblocked.returncode == 0, unblocked.stderr
    assert "is valid" in unblocked.stdout


@pytest.mark.parametrize(
    ("module", "body", "error"),
    [
        (
            "fake_misspelt",
            MISSPELT_HOOK,
            f"unknown hook register_dataset_reader; valid hooks: {', '.join(hook_names())}",
        ),
        ("fake_failing", FAILING_HOOK, "RuntimeError: the logger's config file is missing"),
    ],
)
def test_installed_plugin_mistakes_set_it_aside_with_what_it_registered(tmp_path, monkeypatch, module, body, error):
    install_fake(tmp_path / "site", module, body)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv(BLOCK_ENV, raising=False)
    pm = load_plugins(strict=False)
    registries = collect(pm, click.Group(), strict=False)
    assert [b.name for b in pm.broken] == [module]
    assert error in pm.broken[0].error
    assert "half" not in registries.loggers.entries  # a failing hook's partial registrations are undone
    assert module not in [info.name for info in pm.infos()]
    assert "jsonl" in registries.loggers.entries
    with pytest.raises(PluginError, match=rf"installed plugin {module} \(distribution csm-adapt-fake 1.2.3"):
        collect(load_plugins(strict=False), click.Group())
