"""`prepare`: a recipe's dataset -> WebDataset shards, `index.json` and `rejects.jsonl` (DATA.md).

Samples are read and split into train/val, and assigned to shards of `data.shard_samples` reader
samples each, before any audio work. Each shard is then encoded and written on its own, followed by
a small record (its stats and rejects) in `<out>/.progress/`. A killed run started again skips the
shards that have a record, and ends with the same bytes as an uninterrupted run. `index.json` is
written last: its presence means the data are complete.

The data-relevant part of the recipe (`data_recipe`) is hashed into index.json. A recipe whose data
part changed is refused rather than mixed with old shards, unless `rebuild` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from csm_adapt.config.schema import DataConfig, ModelConfig, ReaderRef
from csm_adapt.config.structure import to_dict
from csm_adapt.data.encode import Frontend, Reject, encode_shard
from csm_adapt.data.shard_writer import sample_key, write_shard
from csm_adapt.data.splits import split_samples
from csm_adapt.errors import CsmAdaptError
from csm_adapt.model.text_tokenizer import normalize_text
from csm_adapt.plugin_api import Sample

INDEX_VERSION = 1
INDEX = "index.json"
REJECTS = "rejects.jsonl"
PROGRESS = ".progress"  # per-shard records and the data recipe of an unfinished run
SPLITS = ("train", "val")


@attrs.frozen
class _Shard:
    split: str
    name: str
    samples: tuple[Sample, ...]


def data_recipe(data: DataConfig, model: ModelConfig) -> dict:
    """What decides the prepared bytes: readers, split, sharding, row limit, tokenizer and codec.

    Not `data.encode_batch_seconds` (speed only) nor anything about training.
    """

    def reader(ref: ReaderRef | None) -> dict | None:
        return None if ref is None else {"name": ref.name, "options": to_dict(ref.options)}

    return {
        "index_version": INDEX_VERSION,
        "reader": reader(data.reader),
        "val_reader": reader(data.val_reader),
        "val_fraction": data.val_fraction,
        "val_by": data.val_by,
        "seed": data.seed,
        "shard_samples": data.shard_samples,
        "max_rows": data.max_rows,
        "text_tokenizer": model.text_tokenizer,
        "audio_codec": model.audio_codec,
    }


def data_hash(data: DataConfig, model: ModelConfig) -> str:
    return hashlib.sha256(json.dumps(data_recipe(data, model), sort_keys=True).encode()).hexdigest()[:16]


def prepared_is_current(data: DataConfig, model: ModelConfig) -> bool:
    """True when `data.out` holds complete shards prepared from this data recipe."""
    index = _read_json(data.out / INDEX)
    return index is not None and index.get("data_hash") == data_hash(data, model)


def prepare(
    data: DataConfig,
    model: ModelConfig,
    *,
    rebuild: bool = False,
    device: str | None = None,
    console: Console | None = None,
    frontend: Frontend | None = None,
) -> dict:
    """Prepare `data.out` unless it is current; returns its index (the parsed index.json).

    Resumes an interrupted run of the same data recipe. Refuses (CsmAdaptError) to touch shards of
    another data recipe unless `rebuild`, which deletes them first. `device` runs decoding,
    resampling and Mimi (default: CUDA when present); `frontend` passes an already loaded tokenizer
    and codec (they must be the ones `model` names).
    """
    console = console or Console()
    out, recipe, digest = data.out, data_recipe(data, model), data_hash(data, model)
    if rebuild:
        _clear(out)
    else:
        _refuse_other_recipe(out, recipe, digest)
        if prepared_is_current(data, model):
            console.print(f"[green]{out} is up to date[/] (data hash {digest})")
            return _read_json(out / INDEX)
    progress_dir = out / PROGRESS
    progress_dir.mkdir(parents=True, exist_ok=True)
    _write_json(progress_dir / "recipe.json", {"data_hash": digest, "data": recipe})

    read_rejects, shards = _plan(data)
    frontend = frontend or _load_frontend(model, device)
    records = _encode_shards(shards, data, frontend, progress_dir, console)
    index = _index(data, model, frontend, shards, records, read_rejects)
    rejects = [r.to_json() for r in read_rejects] + [r for record in records for r in record["rejects"]]
    _write_text(out / REJECTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    _write_json(out / INDEX, index)
    shutil.rmtree(progress_dir)
    _print_summary(index["summary"], out, console)
    return index


def _plan(data: DataConfig) -> tuple[list[Reject], list[_Shard]]:
    """Read and split the samples and cut each split into shards; duplicate ids are rejected."""
    samples = list(data.reader.create().read())
    if data.val_reader is not None:
        train, val = samples, list(data.val_reader.create().read())
    else:
        train, val = split_samples(samples, data.val_fraction, data.val_by, data.seed)
    rejects, seen = [], set()
    splits = {}
    for split, members in (("train", train), ("val", val)):
        kept = []
        for sample in members:
            key = sample_key(sample.id)
            if key in seen:
                detail = f"{sample.source}: id {sample.id!r} (shard key {key!r}) was already used by an earlier sample"
                rejects.append(Reject(sample.id, sample.source, str(sample.turns[0].audio), "duplicate id", detail))
            else:
                seen.add(key)
                kept.append(sample)
        splits[split] = kept
    if not splits["train"]:
        raise CsmAdaptError(f"{data.out}: no training samples (the reader yielded {len(samples)} in all)")
    n = data.shard_samples
    shards = [
        _Shard(split, f"{split}-{i // n:06d}.tar", tuple(kept[i : i + n]))
        for split, kept in splits.items()
        for i in range(0, len(kept), n)
    ]
    return rejects, shards


def _encode_shards(
    shards: list[_Shard], data: DataConfig, frontend: Frontend, progress_dir: Path, console: Console
) -> list[dict]:
    """Each shard's record, encoding and writing the shards that have none yet."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    records = []
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("prepare", total=sum(len(shard.samples) for shard in shards))
        for shard in shards:
            record_path = progress_dir / f"{shard.name}.json"
            record = _read_json(record_path)
            if record is None or not (data.out / shard.name).is_file():
                progress.update(task, description=f"prepare {shard.name}")
                result = encode_shard(
                    shard.samples,
                    frontend,
                    max_rows=data.max_rows,
                    batch_seconds=data.encode_batch_seconds,
                    advance=lambda n: progress.advance(task, n),
                )
                write_shard(data.out / shard.name, result.samples)
                record = {
                    "name": shard.name,
                    "samples": len(result.samples),
                    "rows": [s.rows for s in result.samples],
                    "frames": sum(int(s.codes.shape[1]) for s in result.samples),
                    "seconds": round(result.seconds, 3),
                    "chars": sum(len(normalize_text(t["text"])) for s in result.samples for t in s.meta["turns"]),
                    "clips": result.clips,
                    "elapsed": result.elapsed,
                    "rejects": [r.to_json() for r in result.rejects],
                }
                _write_json(record_path, record)  # after the shard: a record means the shard is complete
            else:
                progress.advance(task, len(shard.samples))
            records.append(record)
    return records


def _load_frontend(model: ModelConfig, device: str | None) -> Frontend:
    # Imported here: torch and moshi take seconds to import, and a current dataset needs neither.
    import torch

    from csm_adapt.model.audio_codec import AudioCodec
    from csm_adapt.model.text_tokenizer import TextTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Frontend(TextTokenizer.load(model.text_tokenizer), AudioCodec.load(model.audio_codec, device))


def _index(
    data: DataConfig,
    model: ModelConfig,
    frontend: Frontend,
    shards: list[_Shard],
    records: list[dict],
    read_rejects: list[Reject],
) -> dict:
    splits = {split: {"shards": []} for split in SPLITS}
    for shard, record in zip(shards, records):
        entry = {key: record[key] for key in ("name", "samples", "rows", "frames", "seconds")}
        splits[shard.split]["shards"].append(entry)
    rejects = [r.reason for r in read_rejects] + [r["reason"] for record in records for r in record["rejects"]]
    clips = sum(record["clips"] for record in records)
    elapsed = sum(record["elapsed"] for record in records)
    seconds = sum(record["seconds"] for record in records)
    # The training set's speaking rate: the `stopping` evaluator's expected duration of a text.
    train = [record for shard, record in zip(shards, records) if shard.split == "train"]
    train_seconds = sum(record["seconds"] for record in train)
    chars_per_second = sum(record["chars"] for record in train) / train_seconds if train_seconds else None
    summary = {
        "samples_read": sum(len(shard.samples) for shard in shards) + len(read_rejects),
        "kept": {split: sum(s["samples"] for s in splits[split]["shards"]) for split in SPLITS},
        "rejected": len(rejects),
        "rejected_by_reason": dict(sorted(Counter(rejects).items())),
        "clips": clips,
        "hours": round(seconds / 3600, 4),
        "rows": sum(sum(record["rows"]) for record in records),
        "frames": sum(record["frames"] for record in records),
        "processing_s": round(elapsed, 3),
        "clips_per_s": round(clips / elapsed, 2) if elapsed else None,
        "audio_s_per_s": round(seconds / elapsed, 2) if elapsed else None,
        "chars_per_second": round(chars_per_second, 3) if chars_per_second else None,
    }
    return {
        "version": INDEX_VERSION,
        "data_hash": data_hash(data, model),
        "text_tokenizer": frontend.tokenizer.identity,
        "audio_codec": frontend.codec.identity,
        "num_codebooks": 32,
        "max_rows": data.max_rows,
        "data": data_recipe(data, model),
        "splits": splits,
        "summary": summary,
    }


def _refuse_other_recipe(out: Path, recipe: dict, digest: str) -> None:
    """Fail when `out` holds (finished or partial) data of another data recipe, naming what changed."""
    previous = _read_json(out / INDEX) or _read_json(out / PROGRESS / "recipe.json")
    if previous is None or previous.get("data_hash") == digest:
        return
    now, before = _flatten(recipe), _flatten(previous.get("data", {}))
    changed = sorted(key for key in now.keys() | before.keys() if now.get(key) != before.get(key))
    raise CsmAdaptError(
        f"{out} holds data prepared from another data recipe (data hash {previous.get('data_hash')}, "
        f"this recipe's is {digest}; changed: {', '.join(changed) or 'unknown'}). "
        "Run `csm-adapt prepare RECIPE --rebuild` to delete it and prepare again, or set data.out to another folder."
    )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def _clear(out: Path) -> None:
    """Delete what `prepare` writes in `out`, and nothing else a user may have put there."""
    for split in SPLITS:
        for path in out.glob(f"{split}-*.tar"):
            path.unlink()
    for name in (INDEX, REJECTS):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / PROGRESS, ignore_errors=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise CsmAdaptError(f"{path}: corrupt ({e}); delete it or run prepare with --rebuild") from None


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, ensure_ascii=False, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, so a killed run never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _print_summary(summary: dict, out: Path, console: Console) -> None:
    table = Table(title=f"prepared {out}", show_header=False)
    table.add_row("samples read", str(summary["samples_read"]))
    for split, kept in summary["kept"].items():
        table.add_row(f"kept ({split})", str(kept))
    table.add_row("rejected", str(summary["rejected"]))
    for reason, count in summary["rejected_by_reason"].items():
        table.add_row(f"  {reason}", str(count))
    table.add_row("audio hours", f"{summary['hours']:.3f}")
    table.add_row("rows", str(summary["rows"]))
    table.add_row("clips/s", str(summary["clips_per_s"]))
    table.add_row("audio s/s", str(summary["audio_s_per_s"]))
    console.print(table)
    if summary["rejected"]:
        console.print(f"rejected samples and why: {out / REJECTS}")
