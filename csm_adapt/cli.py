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
from csm_adapt.commands.memory import memory
from csm_adapt.commands.merge import merge
from csm_adapt.commands.plugins import plugins
from csm_adapt.commands.prepare import prepare
from csm_adapt.commands.push import push
from csm_adapt.commands.recipes import recipes
from csm_adapt.commands.run import run
from csm_adapt.commands.segment import segment
from csm_adapt.commands.sweep import sweep
from csm_adapt.commands.validate import validate
from csm_adapt.errors import CsmAdaptError, PluginError
from csm_adapt.plugin_engine.manager import BrokenPlugin, load_plugins
from csm_adapt.plugin_engine.registries import collect


def report_error(error: CsmAdaptError) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] [red]{escape(str(error))}")


# Commands that work while an installed plugin is broken: they are how a user finds and fixes it.
WORK_WITH_BROKEN_PLUGINS = ("plugins", "recipes")


class CsmAdaptGroup(click.Group):
    """Errors a user can cause print as one red line and exit with status 2, without a traceback."""

    broken_plugins: list[BrokenPlugin] = []  # set by main(): installed plugins that failed to load

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CsmAdaptError as e:
            report_error(e)
            ctx.exit(2)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        # `csm-adapt --help` and `--version` never get here (click answers them while parsing); a
        # subcommand's --help does, and should still work.
        if self.broken_plugins and name not in WORK_WITH_BROKEN_PLUGINS and "--help" not in rest:
            raise PluginError(self.broken_plugins[0].message())
        return name, command, rest


@click.group(cls=CsmAdaptGroup)
@click.version_option(__version__, prog_name="csm-adapt")
def cli() -> None:
    """Finetune Sesame's CSM-1B speech model on new languages and voices."""


for command in (run, sweep, prepare, segment, validate, generate, convert, merge, push, plugins, recipes, evaluate):
    cli.add_command(command)
cli.add_command(memory)


def main() -> None:
    try:
        pm = load_plugins(strict=False)
        collect(pm, cli, strict=False)
    except CsmAdaptError as e:
        report_error(e)
        sys.exit(2)
    cli.broken_plugins = pm.broken
    cli(prog_name="csm-adapt")
