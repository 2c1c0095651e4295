"""The `csm-adapt` command line: core commands, then the commands plugins add."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.markup import escape

from csm_adapt import __version__
from csm_adapt.commands.convert import convert
from csm_adapt.commands.evaluate import evaluate
from csm_adapt.commands.generate import generate
from csm_adapt.commands.plugins import plugins
from csm_adapt.commands.prepare import prepare
from csm_adapt.commands.run import run
from csm_adapt.commands.sweep import sweep
from csm_adapt.commands.validate import validate
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_engine.manager import load_plugins
from csm_adapt.plugin_engine.registries import collect


def report_error(error: CsmAdaptError) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] [red]{escape(str(error))}")


class CsmAdaptGroup(click.Group):
    """Errors a user can cause print as one red line and exit with status 2, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CsmAdaptError as e:
            report_error(e)
            ctx.exit(2)


@click.group(cls=CsmAdaptGroup)
@click.version_option(__version__, prog_name="csm-adapt")
def cli() -> None:
    """Finetune Sesame's CSM-1B speech model on new languages and voices."""


for command in (run, sweep, prepare, validate, generate, convert, plugins, evaluate):
    cli.add_command(command)


def main() -> None:
    try:
        collect(load_plugins(), cli)
    except CsmAdaptError as e:
        report_error(e)
        sys.exit(2)
    cli(prog_name="csm-adapt")
