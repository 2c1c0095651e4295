"""Which cards a memory plan fits, and the change to a recipe that makes it fit one it does not.

A card fits when the plan's total, plus the CUDA context and the caching allocator's fragmentation
(memory.plan.CUDA_CONTEXT_BYTES, FRAGMENTATION), is within its memory. Changes are tried least
invasive first: activation checkpointing (compute only), 8-bit AdamW, a bf16 frozen base (adapters),
fewer rows per micro-batch with more accumulation (the same rows per step), then LoRA, then QLoRA.
Each candidate is a set of recipe overrides, planned again through the same `plan_for(overrides)`
the caller used, so a suggestion is always a recipe that validates.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from csm_adapt.config.schema import Recipe
from csm_adapt.errors import CsmAdaptError
from csm_adapt.memory.plan import CUDA_CONTEXT_BYTES, FRAGMENTATION, GIB, MemoryPlan

_ADAPTER_CHANGES = ("LoRA adapter", "QLoRA adapter")
CARDS: tuple[tuple[str, int], ...] = tuple((f"{n} GB", n * GIB) for n in (8, 16, 24, 40, 80))


def needed_on_card(plan: MemoryPlan) -> int:
    """What a CUDA card must hold for the plan: tensors, fragmentation, context."""
    return int(plan.total * (1 + FRAGMENTATION)) + CUDA_CONTEXT_BYTES


def fits(plan: MemoryPlan, capacity: int) -> bool:
    return needed_on_card(plan) <= capacity


@attrs.frozen
class Change:
    what: str  # in words
    overrides: tuple[str, ...]


@attrs.frozen
class Option:
    change: Change
    needed: int  # bytes on a card with this change (cumulative with the changes before it, if combined)
    fits: bool


@attrs.frozen
class Advice:
    card: str
    capacity: int
    options: tuple[Option, ...]  # each single change, least invasive first
    fix: tuple[Change, ...]  # the least invasive change(s) that make it fit; empty when nothing does


def candidates(recipe: Recipe, rows: Change | None = None) -> list[Change]:
    """Changes that lower memory for this recipe, least invasive first; `rows`, the micro-batch change
    sized for a card, goes before the adapters."""
    t = recipe.train
    out = []
    if not t.activation_checkpointing:
        out.append(Change("activation checkpointing", ("train.activation_checkpointing=true",)))
    if t.optimizer == "adamw":
        out.append(Change("8-bit AdamW", ('train.optimizer="adamw8bit"',)))
    if recipe.adapter is not None and t.frozen_dtype == "fp32":
        out.append(Change("frozen base in bf16", ('train.precision="bf16"', 'train.frozen_dtype="bf16"')))
    if rows is not None:
        out.append(rows)
    if recipe.adapter is None:
        out.append(Change("LoRA adapter (r16)", ('adapter.name="lora"',)))
    if recipe.adapter is None or recipe.adapter.name != "qlora":
        out.append(Change("QLoRA adapter (r16, NF4 base)", ('adapter.name="qlora"', 'train.precision="bf16"')))
    return out


def advise(recipe: Recipe, plan: MemoryPlan, plan_for: Callable[[tuple[str, ...]], MemoryPlan]) -> list[Advice]:
    """For each card the plan does not fit: every candidate change with its figure, and the fix."""
    cache: dict[tuple[str, ...], MemoryPlan | None] = {(): plan}

    def planned(overrides: tuple[str, ...]) -> MemoryPlan | None:
        """None when the change does not make a valid recipe (e.g. an adapter beside train.trainable)."""
        if overrides not in cache:
            try:
                cache[overrides] = plan_for(overrides)
            except CsmAdaptError:
                cache[overrides] = None
        return cache[overrides]

    advice = []
    for card, capacity in CARDS:
        if fits(plan, capacity):
            continue
        changes = candidates(recipe, _rows_change(recipe, capacity, planned))
        changes = [c for c in changes if planned(c.overrides) is not None]
        options = []
        for change in changes:
            p = planned(change.overrides)
            options.append(Option(change, needed_on_card(p), fits(p, capacity)))
        fix: tuple[Change, ...] = next(((o.change,) for o in options if o.fits), ())
        for combination in () if fix else _combinations(changes):
            p = planned(tuple(o for c in combination for o in c.overrides))
            if p is not None and fits(p, capacity):
                fix = combination
                break
        advice.append(Advice(card, capacity, tuple(options), fix))
    return advice


def _combinations(changes: list[Change]) -> list[tuple[Change, ...]]:
    """Several changes together, least invasive first: the non-adapter ones cumulated in order; then
    each adapter (alternatives, never stacked) with a bf16 frozen base and the cheaper changes."""
    plain = [c for c in changes if not c.what.startswith(_ADAPTER_CHANGES)]
    out = [tuple(plain[: i + 1]) for i in range(1, len(plain))]
    bf16_base = Change("frozen base in bf16", ('train.precision="bf16"', 'train.frozen_dtype="bf16"'))
    cheap = [c for c in plain if c.what != "8-bit AdamW" and c.what != bf16_base.what]
    for adapter in (c for c in changes if c.what.startswith(_ADAPTER_CHANGES)):
        out += [(adapter, bf16_base, *cheap[:i]) for i in range(len(cheap) + 1)]
    return out


def _rows_change(recipe: Recipe, capacity: int, planned) -> Change | None:
    """The largest rows_per_micro_batch (halving, down to one sequence) that fits, else the smallest;
    rows_per_step stays, so accumulation makes up the difference."""
    t = recipe.train
    rows, smallest = t.rows_per_micro_batch // 2, recipe.data.max_rows
    tried = None
    while rows >= smallest:
        tried = Change(
            f"rows_per_micro_batch = {rows} (rows_per_step stays {t.rows_per_step})",
            (f"train.rows_per_micro_batch={rows}",),
        )
        p = planned(tried.overrides)
        if p is not None and fits(p, capacity):
            return tried
        rows //= 2
    return tried
