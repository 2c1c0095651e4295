from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from csm_adapt.terminal import make_console

DEFAULT_EVALUATORS = ("stopping", "quality")  # need no download


@click.command()
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL prompts file (text, speaker, optional reference clips) [default: the recipe's eval set].",
)
@click.option(
    "--recipe",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Take the [eval] table (evaluators and their options, settings, prompts) from this recipe.",
)
@click.option(
    "--evaluator",
    "evaluators",
    multiple=True,
    help=f"Evaluator to run, repeatable (without --recipe) [default: {', '.join(DEFAULT_EVALUATORS)}].",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("eval-report"), show_default=True)
@click.option("--max-audio-ms", type=click.IntRange(min=80), help="[default: the recipe's, else 10000]")
@click.option("--seed", "seeds", type=int, multiple=True, help="Repeatable [default: the recipe's, else 0].")
@click.option("--batch-size", type=click.IntRange(min=1), help="Utterances generated together [default: 8].")
@click.option(
    "--chars-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="Speaking rate for `stopping` [default: measured on the recipe's prepared training set].",
)
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU.")
def evaluate(models, prompts, recipe, evaluators, out, max_audio_ms, seeds, batch_size, chars_per_second, device):
    """Speak the eval prompts with each of MODELS and score them; write OUT/report.json and report.html.

    MODELS are hub ids or checkpoint directories (the base model and finetuned ones side by side).
    The prompts come from --prompts, else from the --recipe's [eval] table (its prompts file, else
    its prepared validation utterances). report.html is one self-contained page that works offline.

    Example: csm-adapt evaluate sesame/csm-1b runs/french/checkpoints/best --recipe recipes/french.toml
    """
    import attrs

    from csm_adapt.config.recipe import load_recipe
    from csm_adapt.config.schema import EvalConfig
    from csm_adapt.errors import ConfigError
    from csm_adapt.evaluation.during_training import recipe_evaluation
    from csm_adapt.evaluation.engine import build_evaluation
    from csm_adapt.evaluation.prompts import read_prompts
    from csm_adapt.evaluation.report import ModelResult, write_report
    from csm_adapt.model.synthesizer import Synthesizer
    from csm_adapt.training.distributed import pick_device

    if prompts is None and recipe is None:
        raise ConfigError("evaluate: give --prompts FILE or --recipe RECIPE (or both)")
    console = make_console()
    device = pick_device(device, 0)
    settings = {
        key: value
        for key, value in (("max_audio_ms", max_audio_ms), ("seeds", tuple(seeds)), ("batch_size", batch_size))
        if value
    }
    with console.status("loading the evaluators"):
        if recipe is not None:
            resolved = load_recipe(recipe)
            if resolved.eval is None:
                raise ConfigError(f"{recipe}: no [eval] table: nothing says how to evaluate")
            if evaluators:
                raise ConfigError(
                    "evaluate: --evaluator is for runs without --recipe (the recipe lists its evaluators)"
                )
            resolved = attrs.evolve(resolved, eval=attrs.evolve(resolved.eval, **settings))
            evaluation = recipe_evaluation(resolved, device, prompts)
            if chars_per_second:
                evaluation = build_evaluation(resolved.eval, evaluation.prompts, device, chars_per_second)
        else:
            cfg = EvalConfig(evaluators=_refs(evaluators or DEFAULT_EVALUATORS), **settings)
            evaluation = build_evaluation(cfg, read_prompts(prompts), device, chars_per_second)
    results = []
    for model in models:
        with console.status(f"evaluating {model}"):
            speech = Synthesizer.load(model, device=device)
            results.append(ModelResult(model, evaluation.run(speech)))
            del speech
        line = ", ".join(f"{name} {s.mean:.3f}" for name, s in results[-1].result.summary.items())
        console.print(f"{escape(model)}: {line}", highlight=False)
    path = write_report(out, evaluation.cfg, evaluation.prompts, results)
    console.print(f"[green]wrote[/] {escape(str(out / 'report.json'))} and {escape(str(path))}")


def _refs(names):
    """EvaluatorRefs with default options for the evaluators named on the command line."""
    from csm_adapt.config.schema import EvaluatorRef
    from csm_adapt.plugin_engine.manager import load_plugins
    from csm_adapt.plugin_engine.registries import collect

    registry = collect(load_plugins(), click.Group()).evaluators
    refs = []
    for name in names:
        entry = registry.get(name, "--evaluator")
        refs.append(EvaluatorRef(name, entry.options(), entry.implementation))
    return tuple(refs)
