from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Column, Table

from csm_adapt.config.recipe import load_raw
from csm_adapt.errors import ConfigError
from csm_adapt.plugin_engine.manager import load_plugins
from csm_adapt.plugin_engine.registries import collect
from csm_adapt.terminal import make_console

KINDS = ("readers", "losses", "loggers", "adapters", "evaluators", "commands")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also load the local plugins this recipe lists.",
)
@click.option(
    "--copy-example",
    "example_dest",
    type=click.Path(file_okay=False, path_type=Path),
    help="Copy the example plugin package (a Common Voice reader) into this folder, and stop.",
)
def plugins(as_json: bool, recipe: Path | None, example_dest: Path | None) -> None:
    """List installed plugins: name, version, source and what each registers.

    A broken installed plugin is listed with its error (in red; "error" in --json) instead of what
    it registers; CSM_ADAPT_BLOCK_PLUGINS=NAME skips it.
    """
    if example_dest is not None:
        copy_example(example_dest)
        return
    pm = load_plugins(load_raw(recipe)["plugins"] if recipe else (), strict=False)
    registries = collect(pm, click.Group(), strict=False)
    rows = []
    for info in pm.infos():
        registered = {
            "readers": registries.readers.names_by(info.name),
            "losses": registries.losses.names_by(info.name),
            "loggers": registries.loggers.names_by(info.name),
            "adapters": registries.adapters.names_by(info.name),
            "evaluators": registries.evaluators.names_by(info.name),
            "commands": [name for name, plugin in registries.commands.items() if plugin == info.name],
        }
        rows.append({"name": info.name, "version": info.version, "source": info.source, **registered})
    for broken in pm.broken:
        rows.append(
            {"name": broken.name, "version": broken.version, "source": broken.source, **{kind: [] for kind in KINDS}}
            | {"error": broken.message()}
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    # Four columns, names never cut: it stays readable in an 80-column terminal.
    table = Table(Column("plugin", no_wrap=True), "version", Column("source", overflow="fold"), "registers")
    for row in rows:
        registers = "\n".join(f"{kind}: {', '.join(row[kind])}" for kind in KINDS if row[kind])
        if "error" in row:
            registers = f"[red]BROKEN: {escape(row['error'])}"
        table.add_row(row["name"], row["version"], row["source"], registers)
    make_console().print(table)


EXAMPLE = "csm-adapt-commonvoice"


def copy_example(dest: Path) -> None:
    """The example package ships inside csm-adapt (plugins/examples/ of the source tree)."""
    source = Path(str(resources.files("csm_adapt_plugins") / "examples" / EXAMPLE))
    target = dest / EXAMPLE
    if target.exists():
        raise ConfigError(f"{target} already exists; copy somewhere else or delete it first")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    make_console().print(f"wrote {target}; install it with: pip install -e {target}", markup=False, highlight=False)
