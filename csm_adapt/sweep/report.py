"""A sweep's results in its directory: best.toml, trials.csv, HTML plots, TensorBoard hparams, and a
summary table on the console. Everything here is derived from the study, so it is rewritten whole
each time (a resumed sweep reports on all its trials).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from pathlib import Path

import attrs
import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from csm_adapt.config.objective import Objective
from csm_adapt.config.recipe import load_recipe, recipe_to_toml
from csm_adapt.config.schema import Recipe
from csm_adapt.sweep.space import as_overrides, literal, with_fixed
from csm_adapt.sweep.study import FAIL_REASON, INTERRUPTED

BEST = "best.toml"
TRIALS_CSV = "trials.csv"
PLOTS = "plots"
TENSORBOARD = "tensorboard"


def best_run_dir(recipe: Recipe) -> Path:
    """Where best.toml trains: beside the recipe's own run directory, never over a trial's."""
    return Path(f"{recipe.output.run_dir}-best")


def write_best(
    study: optuna.Study, recipe_path: Path, overrides: Sequence[str], recipe: Recipe, sweep_dir: Path
) -> Path | None:
    """The recipe with the best trial's values, its full train.steps, and no [sweep] table."""
    if not _completed(study):
        return None
    values = with_fixed(recipe.sweep.params, study.best_trial.params)
    run_dir = f"output.run_dir={literal(str(best_run_dir(recipe)))}"
    best = load_recipe(recipe_path, [*overrides, *as_overrides(values), run_dir])
    path = sweep_dir / BEST
    trial, objective = study.best_trial.number, recipe.sweep.objective
    header = f"# csm-adapt sweep: trial {trial} of {sweep_dir}, {objective} = {study.best_value:.5g}\n"
    path.write_text(header + recipe_to_toml(attrs.evolve(best, sweep=None)))
    return path


def _completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def write_csv(study: optuna.Study, sweep_dir: Path) -> Path:
    """One row per trial, like `study.trials_dataframe()` without needing pandas."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({name for t in trials for name in t.params})
    attrs_ = sorted({name for t in trials for name in t.user_attrs})
    path = sweep_dir / TRIALS_CSV
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "state", "value", "datetime_start", "datetime_complete",
                         *(f"params_{n}" for n in params), *(f"user_attrs_{n}" for n in attrs_)])  # fmt: skip
        for t in trials:
            writer.writerow([t.number, t.state.name, _score(t), t.datetime_start, t.datetime_complete,
                             *(t.params.get(n) for n in params), *(t.user_attrs.get(n) for n in attrs_)])  # fmt: skip
    return path


def write_plots(study: optuna.Study, sweep_dir: Path) -> list[Path]:
    """Interactive HTML (plotly) beside one shared copy of plotly.js, so they open offline."""
    from optuna import visualization as vis

    completed = _completed(study)
    if not completed:
        return []
    swept = sorted({name for t in completed for name in t.params})
    plots = {"history": vis.plot_optimization_history, "slice": vis.plot_slice}
    if len(completed) >= 2 and len(swept) > 1:
        plots["importances"] = vis.plot_param_importances
        plots["contour"] = vis.plot_contour
    out = sweep_dir / PLOTS
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, plot in plots.items():
        paths.append(out / f"{name}.html")
        plot(study).write_html(paths[-1], include_plotlyjs="directory")
    return paths


def write_tensorboard(study: optuna.Study, sweep_dir: Path, objective: str) -> Path:
    """One hparams entry per finished trial: compare trials in TensorBoard's HPARAMS tab."""
    from torch.utils.tensorboard import SummaryWriter

    out = sweep_dir / TENSORBOARD
    shutil.rmtree(out, ignore_errors=True)
    with SummaryWriter(out) as writer:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            value = _score(t)
            hparams = {**t.params, "state": t.state.name}
            writer.add_hparams(hparams, {f"hparam/{objective}": value}, run_name=f"trial-{t.number:04d}")
    return out


def summary_table(study: optuna.Study, objective: str) -> Table:
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    best = study.best_trial.number if _completed(study) else None
    better = "lower" if Objective.parse(objective).direction == "min" else "higher"
    table = Table(title=f"sweep {study.study_name}: {objective}, {better} is better")
    for column in ("trial", "state", objective, *names, "note"):
        table.add_column(column, overflow="fold")
    for t in trials:
        value = _score(t)
        note = (
            t.user_attrs.get(FAIL_REASON)
            or t.user_attrs.get(INTERRUPTED)
            or (f"pruned at step {t.last_step}" if t.state == TrialState.PRUNED else "")
        )
        cells = [str(t.number), t.state.name, "" if value is None else f"{value:.4f}"]
        cells += [_short(t.params[n]) if n in t.params else "" for n in names]
        table.add_row(*cells, note, style="bold green" if t.number == best else None)
    return table


def _score(t: optuna.trial.FrozenTrial) -> float | None:
    """The trial's value; a pruned or failed one's last reported validation score."""
    if t.value is not None:
        return t.value
    return t.intermediate_values[t.last_step] if t.last_step is not None else None


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report(
    study: optuna.Study, recipe_path: Path, overrides: Sequence[str], recipe: Recipe, sweep_dir: Path, console: Console
) -> Path | None:
    """Write every output and print the summary; returns best.toml (None when no trial completed)."""
    console.print(summary_table(study, recipe.sweep.objective))
    write_csv(study, sweep_dir)
    write_tensorboard(study, sweep_dir, recipe.sweep.objective)
    plots = write_plots(study, sweep_dir)
    best = write_best(study, recipe_path, overrides, recipe, sweep_dir)
    console.print(f"trials:      {sweep_dir / TRIALS_CSV}")
    console.print(f"plots:       {', '.join(str(p) for p in plots) or '(none: no completed trial)'}")
    console.print(f"hparams:     tensorboard --logdir {sweep_dir / TENSORBOARD}")
    if best:
        console.print(f"[green]best:[/]        {best}  (csm-adapt run {best})")
    else:
        console.print("[yellow]no trial completed: no best.toml[/]")
    return best
