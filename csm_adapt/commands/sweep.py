from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    help="Trials in all, finished ones of a resumed sweep included [default: sweep.trials].",
)
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [default: one per GPU, else 1].")
@click.option(
    "--workers-per-gpu",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Workers sharing each GPU (and its memory).",
)
@click.option(
    "--storage",
    help="An RDB URL (postgresql://user:pass@host/db) shared by several machines "
    "[default: a journal file in the sweep directory].",
)
def sweep(
    recipe: Path,
    overrides: tuple[str, ...],
    trials: int | None,
    workers: int | None,
    workers_per_gpu: int,
    storage: str | None,
) -> None:
    """Search RECIPE's [sweep] space with Optuna: each trial is a training run in the sweep directory.

    OVERRIDES are key=value pairs, applied to every trial. Running the same command again resumes:
    finished trials are kept and interrupted ones re-tried.

    Example: csm-adapt sweep recipes/french.toml --trials 50 --workers 2, then
    csm-adapt run runs/french-sweep/best.toml
    """
    from csm_adapt.sweep.runner import run_sweep

    run_sweep(recipe, overrides, trials=trials, workers=workers, workers_per_gpu=workers_per_gpu, storage=storage)
