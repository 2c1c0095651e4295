"""`csm-adapt memory`: a recipe's predicted peak training memory, the cards it fits, what to change."""

from __future__ import annotations

import json
from pathlib import Path

import click

from csm_adapt.terminal import make_console


def _gib(n: int) -> str:
    from csm_adapt.memory.plan import GIB

    return f"{n / GIB:.2f} GiB"


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option(
    "--device",
    type=click.Choice(["cuda", "cpu"]),
    help="Plan for this device [default: the recipe's train.device; auto plans for CUDA].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan (and measurement) as JSON.")
@click.option(
    "--measure",
    is_flag=True,
    help="Also train --steps real optimizer steps on random data on the recipe's device and print the measured peak.",
)
@click.option("--steps", type=click.IntRange(min=2), default=2, show_default=True, help="Steps to measure.")
def memory(recipe: Path, overrides: tuple[str, ...], device: str | None, as_json: bool, measure: bool, steps: int):
    """Predict the peak memory of training RECIPE (with key=value OVERRIDES).

    Prints weights, gradients, optimizer states, activations and temporaries at the peak, the cards
    (8/16/24/40/80 GB) it fits with room for the CUDA context and fragmentation, and for a card it does
    not fit the least invasive change that makes it fit. Nothing is downloaded: the model is built on
    PyTorch's meta device. Assumes full micro-batches of data.max_rows-row sequences, 90 % of rows
    audio frames (README, "Memory").

    Example: csm-adapt memory recipes/french-lora.toml
    """
    from csm_adapt.config.recipe import load_recipe
    from csm_adapt.memory.advice import CARDS, advise, fits, needed_on_card
    from csm_adapt.memory.plan import CUDA_CONTEXT_BYTES, FRAGMENTATION, plan_memory

    resolved = load_recipe(recipe, overrides)
    plan = plan_memory(resolved, device)
    advice = advise(resolved, plan, lambda extra: plan_memory(load_recipe(recipe, (*overrides, *extra)), device))
    measured = None
    if measure:
        from csm_adapt.memory.measure import measure_peak

        with make_console().status(f"training {steps} steps to measure the peak"):
            measured = measure_peak(resolved, steps=steps)
        # Compared with the plan for the device it ran on (the precision "auto" picks may differ).
        plan_measured_device = plan_memory(resolved, measured.device.partition(":")[0])

    if as_json:
        out = {
            "recipe": str(recipe),
            "plan": plan.to_dict(),
            "needed_on_card": needed_on_card(plan),
            "cards": {card: fits(plan, capacity) for card, capacity in CARDS},
            "advice": [
                {
                    "card": a.card,
                    "options": [
                        {
                            "change": o.change.what,
                            "overrides": list(o.change.overrides),
                            "needed": o.needed,
                            "fits": o.fits,
                        }
                        for o in a.options
                    ],
                    "fix": [{"change": c.what, "overrides": list(c.overrides)} for c in a.fix],
                }
                for a in advice
            ],
        }
        if measured is not None:
            out["measured"] = {
                "peak_bytes": measured.peak_bytes,
                "predicted_bytes": plan_measured_device.total,
                "device": measured.device,
                "steps": measured.steps,
                "method": measured.method,
            }
        click.echo(json.dumps(out, indent=2))
        return

    console = make_console()
    w = plan.workload
    adapter = resolved.adapter.name if resolved.adapter else "none (full finetune)"
    console.print(
        f"[bold]{recipe}[/]: {resolved.model.config}, adapter {adapter}, {w.optimizer}, {w.precision}"
        f"{', frozen base bf16' if resolved.train.frozen_dtype == 'bf16' else ''}, activation checkpointing "
        f"{'on' if w.checkpointing else 'off'}; {w.batch} x {w.seq_len} rows per micro-batch, {w.accum} per step; "
        f"planned for {w.device}",
        highlight=False,
    )
    trainable = ", ".join(f"{k} {_gib(v)}" for k, v in plan.weights_trainable.items()) or "none"
    frozen = ", ".join(f"{k} {_gib(v)}" for k, v in plan.weights_frozen.items()) or "none"
    rows = [
        ("weights", plan.weights, f"trainable {plan.trainable_params / 1e6:,.1f} M ({trainable}); "
         f"frozen {plan.frozen_params / 1e6:,.1f} M ({frozen})"),
        ("gradients", plan.gradients, f"all: {_gib(plan.full_gradients)}"),
        ("optimizer states", plan.optimizer_states, f"{w.optimizer}, all: {_gib(plan.full_optimizer_states)}"),
        ("activations", plan.activations, f"of which weight copies {_gib(plan.weight_copies)}"),
        ("temporaries", plan.temporaries, "working buffers at the peak"),
    ]  # fmt: skip
    for name, size, note in rows:
        console.print(f"  {name:<17}{_gib(size):>11}   {note}", highlight=False, markup=False)
    console.print(f"  {'total':<17}{_gib(plan.total):>11}   peak at {plan.phase}", highlight=False, markup=False)
    console.print(
        f"  on a CUDA card{'':<3}{_gib(needed_on_card(plan)):>11}   + {FRAGMENTATION:.0%} allocator fragmentation, "
        f"+ {_gib(CUDA_CONTEXT_BYTES)} CUDA context",
        highlight=False,
        markup=False,
    )
    verdict = ", ".join(f"{card} {'fits' if fits(plan, cap) else 'no'}" for card, cap in CARDS)
    console.print(f"cards: {verdict}", highlight=False, markup=False)
    # Each single change once (its figure does not depend on the card), then each card's fix.
    options = {o.change.what: o for a in advice for o in a.options}
    if options:
        console.print("single changes, on a CUDA card:", highlight=False, markup=False)
    for o in options.values():
        fitting = [card for card, capacity in CARDS if o.needed <= capacity]
        where = f"fits {fitting[0]}" + (" and up" if len(fitting) > 1 else "") if fitting else "fits none"
        console.print(f"    {o.change.what}: {_gib(o.needed)}  ({where})", highlight=False, markup=False)
    for a in advice:
        if a.fix:
            fix = " + ".join(c.what for c in a.fix)
            words = " ".join(o for c in a.fix for o in c.overrides)
            console.print(f"to fit {a.card}: {fix}  ({words})", highlight=False, markup=False)
        else:
            console.print(f"to fit {a.card}: no change tried fits", highlight=False, markup=False)
    if measured is not None:
        predicted = plan_measured_device.total
        console.print(
            f"measured on {measured.device} ({measured.steps} steps, {measured.method}): {_gib(measured.peak_bytes)}; "
            f"predicted {_gib(predicted)} ({(predicted - measured.peak_bytes) / measured.peak_bytes:+.1%})",
            highlight=False,
            markup=False,
        )
