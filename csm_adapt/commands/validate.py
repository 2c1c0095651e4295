from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from csm_adapt.config.recipe import load_recipe, print_recipe


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
def validate(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check RECIPE (with key=value OVERRIDES) without training, and print the resolved recipe.

    Checks the recipe's tables, its plugins and their options, and builds the dataset reader and
    loss strategy. Downloads nothing and writes nothing.

    Example: csm-adapt validate recipes/french.toml train.lr=3e-5 data.reader.root=/data/siwis
    """
    resolved = load_recipe(recipe, overrides)
    # Their constructors check what can be checked cheaply (e.g. that the dataset root exists).
    resolved.data.reader.create()
    resolved.loss.create()
    console = Console()
    print_recipe(resolved, console)
    console.print(f"[green]{recipe} is valid")
