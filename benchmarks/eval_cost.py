"""Evaluation cost per utterance of the model-free/bundled evaluators, on the shipped demo speech.

    python benchmarks/eval_cost.py [--evaluator NAME ...] [--clips 16] [--device cpu] [--json out.json]

Each evaluator is built once (as a run builds it), then scores `--clips` demo clips (espeak-ng
French, 24 kHz, 1.5-4 s) in one batch after one warm-up batch; reported: seconds per utterance and
per second of audio. Generation is not included (it depends on the model, not the evaluator).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from csm_adapt.audio_io import SAMPLE_RATE, load_audio
from csm_adapt.plugin_api import EvalContext, Utterance
from csm_adapt.plugin_engine.manager import load_plugins
from csm_adapt.plugin_engine.registries import collect

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo_data"


def measure(name: str, clips: list[torch.Tensor], device: torch.device) -> dict:
    entry = collect(load_plugins(), click.Group()).evaluators.get(name, "--evaluator")
    started = time.perf_counter()
    evaluator = entry.implementation(entry.options(), EvalContext(device, chars_per_second=14.0))
    load_s = time.perf_counter() - started
    batch = [
        Utterance(f"c{i}", "Marie aime les pommes.", 0, clip, torch.zeros(32, 1, dtype=torch.long), True, 10_000)
        for i, clip in enumerate(clips)
    ]
    evaluator.evaluate(batch[:2])  # warm-up
    started = time.perf_counter()
    evaluator.evaluate(batch)
    elapsed = time.perf_counter() - started
    audio_s = sum(c.numel() for c in clips) / SAMPLE_RATE
    return {
        "evaluator": name, "load_s": round(load_s, 3), "utterances": len(clips), "audio_s": round(audio_s, 2),
        "s_per_utterance": elapsed / len(clips), "s_per_audio_s": elapsed / audio_s,
    }  # fmt: skip


@click.command()
@click.option("--evaluator", "evaluators", multiple=True, default=("stopping", "quality"), show_default=True)
@click.option("--clips", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(evaluators, clips, device, json_path):
    device = torch.device(device)
    wavs = [load_audio(p) for p in sorted((DEMO / "wavs").glob("*.wav"))[:clips]]
    results = [measure(name, wavs, device) for name in evaluators]
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": str(device)},
        "results": results,
    }  # fmt: skip
    table = Table("evaluator", "load s", "utterances", "audio s", "ms / utterance", "ms / audio s")
    for r in results:
        table.add_row(r["evaluator"], f"{r['load_s']:.2f}", str(r["utterances"]), f"{r['audio_s']:.1f}",
                      f"{1000 * r['s_per_utterance']:.2f}", f"{1000 * r['s_per_audio_s']:.2f}")  # fmt: skip
    Console().print(table)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
