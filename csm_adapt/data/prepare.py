"""`prepare`: a recipe's dataset -> WebDataset shards, `index.json` and `rejects.jsonl` (docs/data-format.md).

Samples are read and split into train/val, and assigned to shards of `data.shard_samples` reader
samples each, before any audio work. Each shard is then encoded and written on its own, followed by
a small record (its stats and rejects) in `<out>/.progress/`. A killed run started again skips the
shards that have a record, and ends with the same bytes as an uninterrupted run. `index.json` is
written last: its presence means the data are complete. Every file's bytes depend only on the
data recipe and the input (timings are printed and returned, never stored).

One `prepare` at a time per `data.out`: an OS lock on the folder refuses a second one (naming its
PID); holding it, leftover temporary files of a killed run are deleted.

`data.out` may be a URL (s3://, gs://, ...): every file goes through `csm_adapt.data.storage`, which
keeps the same promises there (a file is complete under its name or absent, one writer at a time,
leftovers deleted; docs/data-format.md, "Data at a URL").

Under torchrun every rank plans the same shards and encodes every world-th one (on its own GPU);
rank 0 writes `index.json` from the shard records once all ranks are done. The output folder must be
one all ranks see (a shared file system, or a URL). Shard bytes do not depend on the rank, so the result is
that of a single-process run.

The data-relevant part of the recipe (`data_recipe`) is hashed into index.json. A recipe whose data
part changed is refused rather than mixed with old shards, unless `rebuild` is set.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import os
from collections import Counter
from typing import Any

import attrs
from rich.console import Console
from rich.table import Table

from csm_adapt.config.schema import DataConfig, ModelConfig, ReaderRef
from csm_adapt.config.structure import to_dict
from csm_adapt.data.encode import Frontend, Reject, encode_shard
from csm_adapt.data.format import (
    INDEX,
    INDEX_VERSION,
    NUM_CODEBOOKS,
    REJECTS,
    SPLITS,
    Index,
    ShardEntry,
    SplitEntry,
    dump_index,
    sample_key,
    shard_name,
)
from csm_adapt.data.kept import check_kept
from csm_adapt.data.ranks import Ranks
from csm_adapt.data.shard_writer import write_shard
from csm_adapt.data.splits import split_samples
from csm_adapt.data.storage import Store, names, open_store, read_json
from csm_adapt.errors import CsmAdaptError
from csm_adapt.files import reported_writes
from csm_adapt.model.text_tokenizer import normalize_text
from csm_adapt.plugin_api import Malformed, Sample
from csm_adapt.terminal import Progress, make_console

PROGRESS = ".progress"  # per-shard records and the data recipe of an unfinished run


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
        "min_clip_seconds": data.min_clip_seconds,
        "text_tokenizer": model.text_tokenizer,
        "audio_codec": model.audio_codec,
    }


def data_hash(data: DataConfig, model: ModelConfig) -> str:
    return hashlib.sha256(json.dumps(data_recipe(data, model), sort_keys=True).encode()).hexdigest()[:16]


def prepared_is_current(data: DataConfig, model: ModelConfig, store: Store | None = None) -> bool:
    """True when `data.out` holds complete shards prepared from this data recipe."""
    index = read_json(store or open_store(data.out, data.storage_options), INDEX)
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
    """Prepare `data.out` unless it is current; returns its index (the parsed index.json), plus
    "timings" (processing seconds and rates, not stored) when this call encoded anything.

    Resumes an interrupted run of the same data recipe. Refuses (CsmAdaptError) to touch shards of
    another data recipe unless `rebuild`, which deletes them first, and to run while another
    process prepares the same folder. `device` runs decoding, resampling and Mimi (default: CUDA
    when present); `frontend` passes an already loaded tokenizer and codec (they must be the ones
    `model` names).

    Under torchrun (the default process group initialised), every rank must call it: the ranks
    share the shards, and all return once rank 0 has written index.json.
    """
    console = console or make_console()
    out, recipe, digest = data.out, data_recipe(data, model), data_hash(data, model)
    store = open_store(out, data.storage_options)
    ranks = Ranks()
    try:
        if not rebuild and prepared_is_current(data, model, store):  # read-only: needs no lock
            console.print(f"[green]{out} is up to date[/] (data hash {digest})")
            return _finished_index(store)
        # Every rank checks before any rank writes (the barrier below), so all see the same.
        _refuse_other_recipe(store, recipe, digest, rebuild)
        resume = f"csm-adapt prepare RECIPE (or `csm-adapt run RECIPE`) with data.out={out}"
        kept = "The shards written so far are kept and will not be encoded again"
        # Rank 0 holds the folder's lock for all ranks of this prepare.
        lock = store.lock("csm-adapt prepare") if ranks.is_main else contextlib.nullcontext()
        with reported_writes(store.write_dir, kept, resume), lock:
            if ranks.is_main:
                if rebuild:
                    _clear(store)
                for folder in ("", PROGRESS):
                    store.remove_stale_temps(folder, owned=_written_by_prepare)
                _write_json(store, f"{PROGRESS}/recipe.json", {"data_hash": digest, "data": recipe})
            ranks.barrier()
            if not rebuild and prepared_is_current(data, model, store):  # another process finished it while we waited
                return _finished_index(store)

            read_rejects, shards, reader_info = _plan(data)
            frontend = frontend or _load_frontend(model, device)
            # Each rank encodes every world-th shard; a shard's bytes do not depend on who encodes it.
            _encode_shards(shards[ranks.rank :: ranks.world], data, frontend, store, console)
            ranks.barrier()
            if ranks.is_main:
                records = [read_json(store, f"{PROGRESS}/{shard.name}.json") for shard in shards]
                index = _index(data, model, frontend, shards, records, read_rejects, reader_info)
                rejects = [r.to_json() for r in read_rejects] + [r for record in records for r in record["rejects"]]
                store.write_text(REJECTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
                store.write_text(INDEX, dump_index(index))
                store.remove_tree(PROGRESS)
            ranks.barrier()
    finally:
        ranks.close()
        store.close()
    if not ranks.is_main:
        return _finished_index(store)
    timings = _timings(records)
    _print_summary(index.summary, timings, store, console)
    check_kept(index.summary, out)  # after writing: rejects.jsonl says why
    return {**index.to_json(), "timings": timings}


def _finished_index(store: Store) -> dict:
    """The index of prepared data found complete, refused when it kept nothing to train on."""
    index = read_json(store, INDEX)
    check_kept(index["summary"], store)
    return index


def _plan(data: DataConfig) -> tuple[list[Reject], list[_Shard], dict]:
    """Read and split the samples and cut each split into shards; duplicate ids and malformed
    metadata records are rejected.

    Also returns what readers with an `index_info()` method (e.g. a speaker numbering) want
    recorded in index.json, by recipe key ("reader", "val_reader").
    """
    rejects: list[Reject] = []
    readers = {"reader": data.reader.create()}
    samples = _read_samples(readers["reader"], data.reader, "data.reader", data.max_malformed_share, rejects)
    if data.val_reader is not None:
        readers["val_reader"] = data.val_reader.create()
        val_ref = data.val_reader
        train, val = (
            samples,
            _read_samples(readers["val_reader"], val_ref, "data.val_reader", data.max_malformed_share, rejects),
        )
    else:
        train, val = split_samples(samples, data.val_fraction, data.val_by, data.seed)
    seen = set()
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
        malformed = [r for r in rejects if r.id == ""]  # malformed records have no id
        why = f"; {len(malformed)} malformed record(s), the first: {malformed[0].detail}" if malformed else ""
        raise CsmAdaptError(f"{data.out}: no training samples (the reader yielded {len(samples)} in all{why})")
    n = data.shard_samples
    shards = [
        _Shard(split, shard_name(split, i // n), tuple(kept[i : i + n]))
        for split, kept in splits.items()
        for i in range(0, len(kept), n)
    ]
    info = {key: reader.index_info() for key, reader in readers.items() if hasattr(reader, "index_info")}
    return rejects, shards, {key: value for key, value in info.items() if value}


def _read_samples(reader, ref: ReaderRef, key: str, max_share: float, rejects: list[Reject]) -> list[Sample]:
    """A reader's samples; its malformed records go to `rejects`, unless they are so many that the
    reader was clearly given the wrong layout."""
    samples, malformed = [], []
    for item in ref.read(reader):
        if isinstance(item, Malformed):
            malformed.append(Reject("", item.source, "", item.reason, item.detail))
        else:
            samples.append(item)
    total = len(samples) + len(malformed)
    if malformed and len(malformed) > max_share * total:
        raise CsmAdaptError(
            f"{key} ({ref.name}): {len(malformed)} of {total} metadata records are malformed, more than "
            f"data.max_malformed_share={max_share:g}: the metadata probably does not have the layout this "
            f"reader expects (check its columns/format options). The first: {malformed[0].detail}"
        )
    rejects.extend(malformed)
    return samples


def _encode_shards(
    shards: list[_Shard], data: DataConfig, frontend: Frontend, store: Store, console: Console
) -> list[dict]:
    """Each shard's record, encoding and writing the shards that have none yet."""
    records = []
    total = sum(len(shard.samples) for shard in shards)
    present = store.sizes()  # one listing (at a URL, one request rather than one per shard)
    with Progress(console, total, unit="samples", description="prepare") as progress:
        for shard in shards:
            record_name = f"{PROGRESS}/{shard.name}.json"
            record = read_json(store, record_name)
            if record is None or shard.name not in present:
                progress.describe(f"prepare {shard.name}")
                result = encode_shard(
                    shard.samples,
                    frontend,
                    max_rows=data.max_rows,
                    batch_seconds=data.encode_batch_seconds,
                    min_seconds=data.min_clip_seconds,
                    advance=progress.advance,
                )
                written = store.write_file(shard.name, functools.partial(write_shard, samples=result.samples))
                record = {
                    "name": shard.name,
                    "samples": len(result.samples),
                    "bytes": written.bytes,
                    "sha256": written.sha256,
                    "rows": [s.rows for s in result.samples],
                    "frames": sum(int(s.codes.shape[1]) for s in result.samples),
                    "seconds": round(result.seconds, 3),
                    "chars": sum(len(normalize_text(t["text"])) for s in result.samples for t in s.meta["turns"]),
                    "clips": result.clips,
                    "elapsed": result.elapsed,
                    "rejects": [r.to_json() for r in result.rejects],
                }
                _write_json(store, record_name, record)  # after the shard: a record means the shard is complete
            else:
                progress.advance(len(shard.samples))
            records.append(record)
    return records


def _load_frontend(model: ModelConfig, device: str | None) -> Frontend:
    # Imported here: torch and moshi take seconds to import, and a current dataset needs neither.
    import torch

    from csm_adapt.model.audio_codec import AudioCodec
    from csm_adapt.model.text_tokenizer import TextTokenizer

    if device is None and torch.cuda.is_available():
        # Under torchrun each rank of a node encodes on its own GPU.
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    device = device or "cpu"
    return Frontend(TextTokenizer.load(model.text_tokenizer), AudioCodec.load(model.audio_codec, device))


def _index(
    data: DataConfig,
    model: ModelConfig,
    frontend: Frontend,
    shards: list[_Shard],
    records: list[dict],
    read_rejects: list[Reject],
    reader_info: dict,
) -> Index:
    entries: dict[str, list[ShardEntry]] = {split: [] for split in SPLITS}
    for shard, record in zip(shards, records):
        fields = ("name", "samples", "rows", "frames", "seconds", "bytes", "sha256")
        entries[shard.split].append(ShardEntry(**{key: record[key] for key in fields}))
    splits = {split: SplitEntry(shards=tuple(found)) for split, found in entries.items()}
    rejects = [r.reason for r in read_rejects] + [r["reason"] for record in records for r in record["rejects"]]
    seconds = sum(record["seconds"] for record in records)
    # The training set's speaking rate: the `stopping` evaluator's expected duration of a text.
    train = [record for shard, record in zip(shards, records) if shard.split == "train"]
    train_seconds = sum(record["seconds"] for record in train)
    chars_per_second = sum(record["chars"] for record in train) / train_seconds if train_seconds else None
    summary = {
        "samples_read": sum(len(shard.samples) for shard in shards) + len(read_rejects),
        "kept": {split: sum(s.samples for s in splits[split].shards) for split in SPLITS},
        "rejected": len(rejects),
        "rejected_by_reason": dict(sorted(Counter(rejects).items())),
        "clips": sum(record["clips"] for record in records),
        "hours": round(seconds / 3600, 4),
        "rows": sum(sum(record["rows"]) for record in records),
        "frames": sum(record["frames"] for record in records),
        "chars_per_second": round(chars_per_second, 3) if chars_per_second else None,
    }
    return Index(
        version=INDEX_VERSION,
        data_hash=data_hash(data, model),
        text_tokenizer=frontend.tokenizer.identity,
        audio_codec=frontend.codec.identity,
        num_codebooks=NUM_CODEBOOKS,
        max_rows=data.max_rows,
        data=data_recipe(data, model),
        splits=splits,
        summary=summary,
        reader_info=reader_info,
    )


def _timings(records: list[dict]) -> dict:
    """Processing speed of this call's encoding (shards done by an earlier, killed call count too)."""
    clips = sum(record["clips"] for record in records)
    elapsed = sum(record["elapsed"] for record in records)
    seconds = sum(record["seconds"] for record in records)
    return {
        "processing_s": round(elapsed, 3),
        "clips_per_s": round(clips / elapsed, 2) if elapsed else None,
        "audio_s_per_s": round(seconds / elapsed, 2) if elapsed else None,
    }


def _refuse_other_recipe(store: Store, recipe: dict, digest: str, rebuild: bool) -> None:
    """Fail when `store` holds (finished or partial) data of another data recipe, naming what changed."""
    if rebuild:
        return
    previous = read_json(store, INDEX) or read_json(store, f"{PROGRESS}/recipe.json")
    if previous is None or previous.get("data_hash") == digest:
        return
    now, before = _flatten(recipe), _flatten(previous.get("data", {}))
    changed = sorted(key for key in now.keys() | before.keys() if now.get(key) != before.get(key))
    raise CsmAdaptError(
        f"{store} holds data prepared from another data recipe (data hash {previous.get('data_hash')}, "
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


def _clear(store: Store) -> None:
    """Delete what `prepare` writes in `store`, and nothing else a user may have put there."""
    for split in SPLITS:
        for name in names(store, f"{split}-*.tar"):
            store.remove(name)
    for name in (INDEX, REJECTS):
        store.remove(name)
    store.remove_tree(PROGRESS)


def _written_by_prepare(name: str) -> bool:
    """Whether `name` (relative to data.out) is one of the files prepare writes."""
    patterns = (*(f"{split}-*.tar" for split in SPLITS), INDEX, REJECTS, f"{PROGRESS}/*")
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _write_json(store: Store, name: str, value: Any) -> None:
    store.write_text(name, json.dumps(value, ensure_ascii=False, indent=1) + "\n")


def _print_summary(summary: dict, timings: dict, out: Store, console: Console) -> None:
    table = Table(title=f"prepared {out}", show_header=False)
    table.add_row("samples read", str(summary["samples_read"]))
    for split, kept in summary["kept"].items():
        table.add_row(f"kept ({split})", str(kept))
    table.add_row("rejected", str(summary["rejected"]))
    for reason, count in summary["rejected_by_reason"].items():
        table.add_row(f"  {reason}", str(count))
    table.add_row("audio hours", f"{summary['hours']:.3f}")
    table.add_row("rows", str(summary["rows"]))
    table.add_row("clips/s", str(timings["clips_per_s"]))
    table.add_row("audio s/s", str(timings["audio_s_per_s"]))
    console.print(table)
    if summary["rejected"]:
        console.print(f"rejected samples and why: {out.member(REJECTS)}")
