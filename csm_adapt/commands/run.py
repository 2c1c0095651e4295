from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the run directory.")
@click.option("--rebuild-data", is_flag=True, help="Re-prepare the shards even if they exist for another recipe.")
def run(recipe: Path, overrides: tuple[str, ...], resume: bool, rebuild_data: bool) -> None:
    """Prepare the data if needed, train, and write samples and checkpoints for RECIPE.

    OVERRIDES are key=value pairs (TOML values): csm-adapt run recipes/french.toml train.lr=3e-5

    Multi-GPU: torchrun --nproc-per-node 8 -m csm_adapt run RECIPE
    """
    import os

    from csm_adapt.config.recipe import load_recipe, print_recipe, save_recipe
    from csm_adapt.data.prepare import prepare
    from csm_adapt.training.distributed import barrier, init_distributed, pick_device, shutdown
    from csm_adapt.training.loop import train

    resolved = load_recipe(recipe, overrides)
    console = Console()
    d = init_distributed(pick_device(resolved.train.device, int(os.environ.get("LOCAL_RANK", "0"))))
    main = d.is_main
    if main:
        print_recipe(resolved, console)
        console.print(f"resolved recipe saved to {save_recipe(resolved)}")
        # Rank 0 prepares (or checks) the shards while the other ranks wait.
        prepare(resolved.data, resolved.model, rebuild=rebuild_data, console=console)
    barrier(d)
    try:
        final = train(resolved, resume=resume)
    finally:
        shutdown(d)
    if main:
        run_dir = resolved.output.run_dir
        console.print(f"[green]done.[/] final model: {final}")
        console.print(f"  best model:   {run_dir / 'checkpoints' / 'best'}")
        console.print(f"  samples:      {run_dir / 'samples'}")
        console.print(f"  metrics:      tensorboard --logdir {run_dir}")
        if resolved.adapter is None:
            console.print(f'  speak with:   csm-adapt generate --model {final} --text "..." --out out.wav')
        else:
            console.print(f'  speak with:   csm-adapt generate --adapter {final} --text "..." --out out.wav')
            console.print(f"  merge with:   csm-adapt merge {final} {run_dir / 'merged'}")
