"""Prepare throughput on the shipped demo set: Mimi batched across clips vs one clip per call.

    python benchmarks/prepare_throughput.py [--device cuda] [--batch-seconds 120] [--repeat 1] [--json out.json]

Runs the whole prepare path (read, decode, resample, tokenize, encode, write shards) with the
offline tokenizer and codec, into a temporary folder, and reports clips/s and audio-seconds/s.
"One clip at a time" is the same run with a batch budget smaller than any clip.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from csm_adapt.config.schema import DataConfig, ModelConfig, ReaderRef
from csm_adapt.data.encode import Frontend
from csm_adapt.data.prepare import prepare
from csm_adapt.model.audio_codec import AudioCodec
from csm_adapt.model.text_tokenizer import TextTokenizer
from csm_adapt.plugin_engine.manager import load_plugins
from csm_adapt.plugin_engine.registries import collect

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo_data"
MODEL = ModelConfig(text_tokenizer="offline", audio_codec="offline")


def run(frontend: Frontend, batch_seconds: float, repeat: int) -> dict:
    entry = collect(load_plugins(), click.Group()).readers.get("ljspeech", "reader")
    reader = ReaderRef("ljspeech", entry.options(root=DEMO), entry.implementation)
    best = None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            data = DataConfig(reader=reader, out=Path(out), val_fraction=0.0, encode_batch_seconds=batch_seconds)
            index = prepare(data, MODEL, console=Console(quiet=True), frontend=frontend)
            summary = {**index["summary"], **index["timings"]}  # timings are returned, not stored
        if best is None or summary["processing_s"] < best["processing_s"]:
            best = summary
    return {key: best[key] for key in ("clips", "hours", "processing_s", "clips_per_s", "audio_s_per_s")}


@click.command()
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@click.option("--batch-seconds", default=120.0, show_default=True, help="Padded audio per Mimi call, batched run.")
@click.option("--repeat", default=1, show_default=True, help="Runs per setting; the fastest is reported.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results here."
)
def main(device: str, batch_seconds: float, repeat: int, json_path: Path | None) -> None:
    frontend = Frontend(TextTokenizer.load("offline"), AudioCodec.load("offline", device))
    results = {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "batched": run(frontend, batch_seconds, repeat),
        "one_clip_at_a_time": run(frontend, 1e-3, repeat),
    }
    if json_path:
        json_path.write_text(json.dumps(results, indent=1) + "\n")
    table = Table(title=f"prepare throughput, demo set, {device} ({results['torch_threads']} threads)")
    for column in ("mode", "clips", "audio s", "seconds", "clips/s", "audio s/s"):
        table.add_column(column, justify="right")
    for mode in ("batched", "one_clip_at_a_time"):
        r = results[mode]
        cells = (r["hours"] * 3600, r["processing_s"], r["clips_per_s"], r["audio_s_per_s"])
        table.add_row(mode, str(r["clips"]), *(f"{cell:.2f}" for cell in cells))
    Console().print(table)


if __name__ == "__main__":
    main()
