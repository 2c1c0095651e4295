"""Peak training memory of csm-1b: the planner's prediction against a measurement, per variant.

    python benchmarks/memory.py --device cuda --json memory-cuda.json
    python benchmarks/memory.py --device cpu --measure lora-ac,qlora-ac,lora,qlora --json memory-cpu.json

Variants (issue 11): the full finetune (8-bit AdamW), LoRA r16 over a bf16 base and QLoRA r16 (NF4
base), each with and without activation checkpointing; 2048 rows per micro-batch (one 2048-row
sequence), no accumulation, bf16 autocast, the `amortized` loss (decoder on 1/16 of the frames), as
recipes/french.toml trains. Every variant is planned (csm_adapt/memory/plan.py); those
named by --measure (default: all on CUDA, none on a CPU) also train two real optimizer steps on
random weights and data (memory.measure.measure_peak: CUDA max_memory_allocated, or the CPU
allocator's events under the profiler) and report the measured peak and the seconds per step.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from csm_adapt.config.recipe import load_recipe
from csm_adapt.memory.advice import needed_on_card
from csm_adapt.memory.measure import measure_peak
from csm_adapt.memory.plan import GIB, plan_memory
from csm_adapt.training.precision import cpu_bf16_units

RECIPE = Path(__file__).parents[1] / "recipes" / "french.toml"
COMMON = ('train.precision="bf16"',)
ADAPTERS = {
    "full": ('train.optimizer="adamw8bit"',),
    "lora": ('adapter.name="lora"', "adapter.rank=16", 'train.frozen_dtype="bf16"'),
    "qlora": ('adapter.name="qlora"', "adapter.rank=16"),
}
VARIANTS = {
    f"{name}{'-ac' if ac else ''}": (*COMMON, *extra, f"train.activation_checkpointing={str(ac).lower()}")
    for name, extra in ADAPTERS.items()
    for ac in (False, True)
}
# The targets, in GiB, with activation checkpointing.
TARGETS = {"lora-ac": 8.0, "qlora-ac": 5.0, "full-ac": 22.0}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="csm-1b")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=2048, help="rows per micro-batch: one sequence of this many rows")
    p.add_argument("--measure", help="comma-separated variants to measure [default: all on CUDA, none on CPU]")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps measured (>= 2)")
    p.add_argument("--json", type=Path, help="write the report here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    opts = parse_args(argv)
    if opts.measure is None:
        measure = list(VARIANTS) if opts.device == "cuda" else []
    else:
        measure = [v for v in opts.measure.split(",") if v]
    unknown = sorted(set(measure) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    base = (
        f'model.config="{opts.model}"', f"train.device={opts.device}",
        f"data.max_rows={opts.rows}", f"train.rows_per_micro_batch={opts.rows}", f"train.rows_per_step={opts.rows}",
    )  # fmt: skip
    results = {}
    for name, overrides in VARIANTS.items():
        recipe = load_recipe(RECIPE, (*base, *overrides))
        plan = plan_memory(recipe, opts.device)
        row = {
            "overrides": list(overrides),
            "predicted_bytes": plan.total,
            "predicted_on_card_bytes": needed_on_card(plan) if opts.device == "cuda" else None,
            "peak_phase": plan.phase,
            "split": plan.to_dict(),
        }
        if name in measure:
            m = measure_peak(recipe, steps=opts.steps)
            row.update(
                measured_bytes=m.peak_bytes,
                error=(plan.total - m.peak_bytes) / m.peak_bytes,
                # The first step included (optimizer state creation, torchao's compile); CPU: under the profiler.
                seconds_per_step=m.seconds_per_step,
                method=m.method,
            )
        results[name] = row
        _print_row(name, row)
    report = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if opts.device == "cuda" else platform.processor() or "cpu",
            "cpu_bf16_units": cpu_bf16_units(),
        },
        "config": {"model": opts.model, "rows_per_micro_batch": opts.rows, "steps": opts.steps, "recipe": str(RECIPE)},
        "command": " ".join(["python", "benchmarks/memory.py", *(argv if argv is not None else sys.argv[1:])]),
        "targets_gib": TARGETS,
        "results": results,
    }
    full, lora = results["full-ac"].get("seconds_per_step"), results["lora-ac"].get("seconds_per_step")
    if full and lora:
        report["lora_speedup_over_full"] = full / lora
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _print_row(name: str, row: dict) -> None:
    line = f"{name:<9} predicted {row['predicted_bytes'] / GIB:6.2f} GiB"
    if "measured_bytes" in row:
        line += f"  measured {row['measured_bytes'] / GIB:6.2f} GiB ({row['error']:+.1%})"
        line += f", {row['seconds_per_step']:.0f} s/step"
    print(line, flush=True)


if __name__ == "__main__":
    main()
