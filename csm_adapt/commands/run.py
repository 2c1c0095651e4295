from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from csm_adapt.run_report import format_report, run_report, shown
from csm_adapt.terminal import make_console


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the run directory.")
@click.option("--rebuild-data", is_flag=True, help="Re-prepare the shards even if they exist for another recipe.")
@click.option("--verbose", "-v", is_flag=True, help="Also print the resolved recipe (it is saved in any case).")
def run(recipe: Path, overrides: tuple[str, ...], resume: bool, rebuild_data: bool, verbose: bool) -> None:
    """Prepare the data if needed, train, and write samples and checkpoints for RECIPE.

    OVERRIDES are key=value pairs (TOML values): csm-adapt run recipes/french.toml train.lr=3e-5

    Multi-GPU: torchrun --nproc-per-node 8 -m csm_adapt run RECIPE
    """
    import os

    from csm_adapt.config.recipe import load_recipe, print_recipe, save_recipe
    from csm_adapt.data.prepare import prepare
    from csm_adapt.model.sources import check_model_sources
    from csm_adapt.training.distributed import init_distributed, pick_device, shutdown
    from csm_adapt.training.loop import claim_run_dir, train

    resolved = load_recipe(recipe, overrides)
    # Seconds now rather than a page of HTTP retries after the data are prepared.
    check_model_sources(resolved.model.checkpoint, resolved.model.text_tokenizer, resolved.model.audio_codec)
    console = make_console()
    d = init_distributed(pick_device(resolved.train.device, int(os.environ.get("LOCAL_RANK", "0"))))
    main = d.is_main
    # Nothing is written to the run directory before every refusal check has passed.
    with claim_run_dir(resolved.output.run_dir, resume):
        if main:
            if verbose:
                print_recipe(resolved, console)
            console.print(f"resolved recipe saved to {save_recipe(resolved)}")
        # All ranks prepare (or check) the shards, each encoding its share; all return when it is done.
        quiet = Console(quiet=True)
        prepare(resolved.data, resolved.model, rebuild=rebuild_data, console=console if main else quiet)
        try:
            final = train(resolved, resume=resume)
        finally:
            shutdown(d)
    if main:
        console.print(f"[green]done.[/] final model: {shown(final)}")
        for line in format_report(run_report(resolved.output.run_dir, resolved.data.out)):
            console.print(line, markup=False, highlight=False)
        if resolved.adapter is None:
            console.print(f'speak with: csm-adapt generate --model {shown(final)} --text "..." --out out.wav')
        else:
            console.print(f'speak with: csm-adapt generate --adapter {shown(final)} --text "..." --out out.wav')
            console.print(f"merge with: csm-adapt merge {shown(final)} {shown(resolved.output.run_dir / 'merged')}")
