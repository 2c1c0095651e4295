"""Loader throughput with packing: rows/s, samples/s and the padding fraction, 0 and 2 workers.

Writes seeded synthetic shards (docs/data-format.md) with a realistic length mix, 2-15 s utterances
(25-190 frames) with 10-60 text tokens, into a temp dir, then times the training loader.

    python benchmarks/loader_throughput.py [--samples 4000] [--batches 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from csm_adapt.data.format import INDEX, INDEX_VERSION, NUM_CODEBOOKS, Index, ShardEntry, SplitEntry, dump_index
from csm_adapt.data.loader import TrainLoader
from csm_adapt.data.packing import Packer
from csm_adapt.data.shard_writer import PreparedSample, write_shard

K = 32


def write_shards(root: Path, samples: int, per_shard: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shards = []
    for n, start in enumerate(range(0, samples, per_shard)):
        name, shard = f"train-{n:06d}.tar", []
        for i in range(start, min(samples, start + per_shard)):
            frames, tokens = int(rng.integers(25, 191)), int(rng.integers(10, 61))
            meta = {"id": f"u{i}", "source": f"synthetic:{i}", "rows": tokens + frames + 1,
                    "turns": [{"speaker": 0, "text": "", "text_tokens": tokens, "frames": frames, "target": True,
                               "audio": "", "start": None, "end": None}]}  # fmt: skip
            codes = rng.integers(0, 2048, (K, frames)).astype(np.int16)
            shard.append(PreparedSample(f"u{i}", codes, rng.integers(0, 128256, tokens).astype(np.int32), meta))
        written = write_shard(root / name, shard)
        rows = tuple(s.rows for s in shard)
        frames = sum(s.codes.shape[1] for s in shard)
        shards.append(ShardEntry(name=name, samples=len(rows), rows=rows, frames=frames, seconds=0.0,
                                 bytes=written.bytes, sha256=written.sha256))  # fmt: skip
    splits = {"train": SplitEntry(shards=tuple(shards)), "val": SplitEntry(shards=tuple(shards[:1]))}
    index = Index(version=INDEX_VERSION, data_hash="synthetic", text_tokenizer="synthetic", audio_codec="synthetic",
                  num_codebooks=NUM_CODEBOOKS, max_rows=2048, data={}, splits=splits, summary={})  # fmt: skip
    (root / INDEX).write_text(dump_index(index))


def measure(root: Path, packer: Packer, workers: int, batches: int, pack_buffer: int) -> dict:
    loader = TrainLoader(root, packer, num_workers=workers, pack_buffer=pack_buffer)
    it = iter(loader)
    next(it)  # worker start-up and the first buffer are not throughput
    rows = samples = padded = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        rows, samples = rows + batch.num_rows, samples + batch.num_samples
        padded += batch.tokens.shape[0] * batch.tokens.shape[1]
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "batches": batches,
        "rows_per_s": rows / seconds,
        "samples_per_s": samples / seconds,
        "batches_per_s": batches / seconds,
        "padding_fraction": 1 - rows / padded,
        "mean_batch_rows": padded / batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--rows-per-batch", type=int, default=8192)
    parser.add_argument("--pack-buffer", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    packer = Packer(max_rows=2048, rows_per_batch=args.rows_per_batch, pad_multiple=64)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shards(root, args.samples, args.per_shard, args.seed)
        results = [measure(root, packer, w, args.batches, args.pack_buffer) for w in (0, 2)]

    table = Table(title=f"loader: max_rows 2048, {args.rows_per_batch} rows/batch, pack buffer {args.pack_buffer}")
    for col in ("workers", "rows/s", "samples/s", "batches/s", "padding", "rows/batch (padded)"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r["workers"]), f"{r['rows_per_s']:,.0f}", f"{r['samples_per_s']:,.0f}", f"{r['batches_per_s']:.1f}",
            f"{r['padding_fraction']:.2%}", f"{r['mean_batch_rows']:,.0f}",
        )  # fmt: skip
    Console().print(table)
    if args.json:
        args.json.write_text(
            json.dumps({"config": vars(args) | {"json": str(args.json)}, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
