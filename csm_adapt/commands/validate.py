from __future__ import annotations

from pathlib import Path

import click

from csm_adapt.config.recipe import load_recipe, print_recipe
from csm_adapt.model.sources import check_model_sources
from csm_adapt.terminal import make_console


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
def validate(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check RECIPE (with key=value OVERRIDES) without training, and print the resolved recipe.

    Checks the recipe's tables, its plugins and their options, builds the dataset reader and loss
    strategy, and checks that the checkpoint, tokenizer and codec can be had: a local path that
    exists, files in the Hugging Face cache, or (unless HF_HUB_OFFLINE) on the hub, asked without
    downloading. Writes nothing.

    Example: csm-adapt validate recipes/demo.toml train.lr=1e-3
    """
    resolved = load_recipe(recipe, overrides)
    # Their constructors check what can be checked cheaply (e.g. that the dataset root exists).
    resolved.data.reader.create()
    resolved.loss.create()
    model = resolved.model
    check_model_sources(model.checkpoint, model.text_tokenizer, model.audio_codec)
    console = make_console()
    print_recipe(resolved, console)
    console.print(f"[green]{recipe} is valid")
