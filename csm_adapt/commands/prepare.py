from __future__ import annotations

import os
from pathlib import Path

import click
from rich.console import Console

from csm_adapt.config.recipe import load_recipe
from csm_adapt.data.prepare import prepare as prepare_data
from csm_adapt.training.distributed import init_distributed, pick_device, shutdown


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--rebuild", is_flag=True, help="Delete the shards in data.out and prepare them again.")
@click.option("--device", default=None, help="Where to decode and encode audio (default: cuda when present, else cpu).")
def prepare(recipe: Path, overrides: tuple[str, ...], rebuild: bool, device: str | None) -> None:
    """Turn RECIPE's dataset into token shards in data.out (with key=value OVERRIDES).

    Reads the dataset, splits train/val, decodes and encodes the audio with Mimi, and writes
    train-*.tar / val-*.tar, index.json and rejects.jsonl. An interrupted run resumes where it
    stopped; a recipe whose data settings changed is refused unless --rebuild.

    Example: csm-adapt prepare recipes/french.toml data.reader.root=/data/siwis

    Several processes share the shards (one GPU each): torchrun --nproc-per-node 8 -m csm_adapt prepare RECIPE
    """
    resolved = load_recipe(recipe, overrides)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    picked = pick_device(device or "auto", local_rank)
    d = init_distributed(picked)
    try:
        console = Console(quiet=not d.is_main)
        prepare_data(resolved.data, resolved.model, rebuild=rebuild, device=str(picked), console=console)
    finally:
        shutdown(d)
