from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Column, Table

from csm_adapt.config.recipe import load_raw
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
def plugins(as_json: bool, recipe: Path | None) -> None:
    """List installed plugins: name, version, source and what each registers.

    A broken installed plugin is listed with its error (in red; "error" in --json) instead of what
    it registers; CSM_ADAPT_BLOCK_PLUGINS=NAME skips it.
    """
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
