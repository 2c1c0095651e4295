"""Prepare throughput on the shipped demo set: Mimi batched across clips vs one clip per call.

    python benchmarks/prepare_throughput.py [--device cuda] [--batch-seconds 120] [--repeat 1] [--json out.json]

Runs the whole prepare path (read, decode, resample, tokenize, encode, write shards) with the
offline tokenizer and codec, into a temporary folder, and reports clips/s and audio-seconds/s.
"One clip at a time" is the same run with a batch budget smaller than any clip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
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


RANKS_RECIPE = """
[model]
config = "micro"
text_tokenizer = "offline"
audio_codec = "offline"
[data]
out = "{out}"
val_fraction = 0.0
shard_samples = 4
encode_batch_seconds = {batch_seconds}
[data.reader]
name = "ljspeech"
root = "{demo}"
speakers = "{demo}/speakers.json"
[loss]
strategy = "amortized"
[output]
run_dir = "{out}-run"
"""


def run_command(ranks: int, workdir: Path, batch_seconds: float, device: str) -> dict:
    """Wall-clock seconds of `csm-adapt prepare` with `ranks` processes, then of a rerun (start-up)."""
    out = workdir / f"ranks-{ranks}"
    recipe = workdir / f"ranks-{ranks}.toml"
    recipe.write_text(RANKS_RECIPE.format(out=out, batch_seconds=batch_seconds, demo=DEMO))
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    command = [*launcher, "-m", "csm_adapt", "prepare", str(recipe), "--device", device]
    walls = []
    for _ in range(2):  # the second run finds the data current: start-up only
        started = time.perf_counter()
        # One process uses torch's default threads (all cores); torchrun gives each rank 1 thread.
        subprocess.run(command, check=True, capture_output=True)
        walls.append(time.perf_counter() - started)
    summary = json.loads((out / "index.json").read_text())["summary"]
    seconds = summary["hours"] * 3600
    return {
        "processes": ranks,
        "clips": summary["clips"],
        "audio_s": round(seconds, 2),
        "wall_s": round(walls[0], 2),
        "startup_s": round(walls[1], 2),
        "clips_per_s": round(summary["clips"] / walls[0], 2),
        "audio_s_per_s": round(seconds / walls[0], 2),
    }


def compare_ranks(ranks: int, batch_seconds: float, device: str, json_path: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_command(n, Path(tmp), batch_seconds, device) for n in (1, ranks)]
    if json_path:
        json_path.write_text(json.dumps({"device": device, "cpus": os.cpu_count(), "results": results}, indent=1))
    table = Table(title=f"prepare, 1 vs {ranks} processes, demo set, {device}, {os.cpu_count()} CPUs")
    for column in ("processes", "clips", "audio s", "wall s", "start-up s", "clips/s", "audio s/s"):
        table.add_column(column, justify="right")
    for r in results:
        cells = (r["processes"], r["clips"], r["audio_s"], r["wall_s"], r["startup_s"], r["clips_per_s"])
        table.add_row(*(str(cell) for cell in cells), str(r["audio_s_per_s"]))
    Console().print(table)


@click.command()
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@click.option("--batch-seconds", default=120.0, show_default=True, help="Padded audio per Mimi call, batched run.")
@click.option("--repeat", default=1, show_default=True, help="Runs per setting; the fastest is reported.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results here."
)
@click.option("--ranks", type=int, default=None, help="Compare 1 process with this many (torchrun) instead.")
def main(device: str, batch_seconds: float, repeat: int, json_path: Path | None, ranks: int | None) -> None:
    if ranks is not None:
        compare_ranks(ranks, batch_seconds, device, json_path)
        return
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
