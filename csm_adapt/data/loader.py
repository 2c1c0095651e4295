"""Streams prepared shards (format: docs/data-format.md) as packed batches within a row budget.

Training (`TrainLoader`): the shard order is reshuffled every epoch from (seed, epoch), samples go
through a seeded shuffle buffer, and epochs repeat forever (the trainer counts steps, so a rank
that runs out of data early never leaves the others waiting in a collective).

The work is split over "slots" = DDP ranks x DataLoader workers. With at least one shard per slot,
each slot reads its own shards; with fewer (tiny datasets), every slot reads all shards and keeps
the samples whose index modulo the slot count is its own, so no worker sits empty and hangs.
Either way each sample is seen exactly once per epoch across all slots.

Each worker packs and batches its own samples, so a batch never mixes two workers' samples, and
since the DataLoader takes batches from its workers round-robin, the order is a function of the
seed. A consequence: each worker runs its own epochs, and the state to resume from is per worker
(`LoaderState`); it is also per rank, so under DDP every rank saves and restores its own.

Validation (`ValLoader`): the whole val split, in order, unshuffled, read fully by every rank, so
every rank computes the same validation loss without any communication.

Shards are read from a folder or streamed from a URL (`csm_adapt.data.storage`; `data_dir` may be
either, or an open store carrying `data.storage_options`), with the same checks.

Nothing is read silently wrong: shard sizes are checked against index.json before training starts
(a stat per shard; for a URL, one listing), and each shard is read whole and checked against its
sha256 and sample count before any of its samples is used (its cost: benchmarks/RESULTS.md, "Shard
verification").
A damaged shard stops the run, naming the shard and how to rebuild it, or, with
`on_corrupt="skip"` (`data.on_corrupt`), is left out, counted and reported. Decoded samples are
checked for shapes and code ranges, so a bad sample is named instead of failing deep in the loss.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
import sys
import tarfile
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from csm_adapt.data import format as fmt
from csm_adapt.data.batches import Batch, SampleRows, collate, sample_rows
from csm_adapt.data.format import read_index
from csm_adapt.data.kept import check_kept
from csm_adapt.data.packing import Packer
from csm_adapt.data.ranks import rank_and_world
from csm_adapt.data.storage import Store, open_store
from csm_adapt.errors import CsmAdaptError

OnCorrupt = Literal["stop", "skip"]


class ShardError(CsmAdaptError):
    """A shard that does not match index.json (truncated, corrupted or replaced)."""


def _damaged(path: Path | str, why: str) -> ShardError:
    return ShardError(
        f"{path}: damaged shard ({why}). Rebuild the data with `csm-adapt prepare RECIPE --rebuild`, "
        'or set data.on_corrupt = "skip" to train without this shard'
    )


def _report_skip(error: ShardError, skipped: set[str]) -> None:
    """Log a shard left out under on_corrupt="skip" (once per process and shard) and count it."""
    if str(error) not in skipped:
        skipped.add(str(error))
        print(f'warning: skipping ({len(skipped)} so far, data.on_corrupt = "skip"): {error}', file=sys.stderr)


@attrs.frozen
class _Shard:
    store: Store = attrs.field(eq=False)
    entry: fmt.ShardEntry

    @property
    def path(self) -> Path | str:
        return self.store.member(self.entry.name)


@attrs.frozen
class _Split:
    """The non-empty shards of one split, from index.json, checked for presence and size."""

    shards: tuple[_Shard, ...]
    num_samples: int
    longest: int  # rows of the longest sample
    on_corrupt: OnCorrupt

    @classmethod
    def read(cls, data_dir: Path | str | Store, split: str, on_corrupt: OnCorrupt = "stop") -> _Split:
        store = open_store(data_dir)
        index = read_index(store)
        entries = [s for s in index.split(split).shards if s.samples > 0]
        sizes = store.sizes() if entries else {}
        shards, skipped = [], set()
        for entry in entries:
            shard = _Shard(store, entry)
            try:
                _check_size(shard, sizes.get(entry.name))
            except ShardError as e:
                if on_corrupt == "stop":
                    raise
                _report_skip(e, skipped)
                continue
            shards.append(shard)
        if not shards:
            if not entries:
                check_kept(index.summary, store, split)  # names the reject reasons when nothing was kept
            what = "no undamaged samples" if entries else "no samples"
            raise CsmAdaptError(f"{fmt.index_path(data_dir)}: split {split!r} has {what}")
        return cls(
            shards=tuple(shards),
            num_samples=sum(s.entry.samples for s in shards),
            longest=max(max(s.entry.rows) for s in shards),
            on_corrupt=on_corrupt,
        )

    def check_fits(self, packer: Packer) -> None:
        # Fail before training starts rather than at the first long sample, maybe hours in.
        if self.longest > packer.max_rows:
            raise CsmAdaptError(
                f"the prepared data hold samples of {self.longest} rows, longer than max_rows={packer.max_rows}"
            )


def _check_size(shard: _Shard, size: int | None) -> None:
    """`size`: the shard's size in bytes, None when it is missing."""
    if size is None:
        raise _damaged(shard.path, "missing")
    if size != shard.entry.bytes:
        raise _damaged(shard.path, f"{size} bytes, index.json says {shard.entry.bytes}")


def _shard_members(shard: _Shard) -> list[dict]:
    """The shard's samples as {member: bytes, "__key__", "__url__"}, once its bytes are verified."""
    try:
        data = shard.store.read_bytes(shard.entry.name)
    except (FileNotFoundError, IsADirectoryError):
        data = None
    _check_size(shard, None if data is None else len(data))
    if hashlib.sha256(data).hexdigest() != shard.entry.sha256:
        raise _damaged(shard.path, "its sha256 differs from index.json")
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                sample = samples.setdefault(key, {"__key__": key, "__url__": str(shard.path)})
                sample[ext] = tar.extractfile(member).read()
    except tarfile.TarError as e:
        raise _damaged(shard.path, f"not a readable tar: {e}") from None
    if len(samples) != shard.entry.samples:
        raise _damaged(shard.path, f"{len(samples)} samples, index.json says {shard.entry.samples}")
    return list(samples.values())


def _verified_samples(shards: Iterable[_Shard], on_corrupt: OnCorrupt) -> Iterator[dict]:
    skipped: set[str] = set()
    for shard in shards:
        try:
            members = _shard_members(shard)
        except ShardError as e:
            if on_corrupt == "stop":
                raise
            _report_skip(e, skipped)
            continue
        yield from members


@attrs.frozen
class SampleLimits:
    """What a decoded sample's arrays must satisfy (the model's vocabularies)."""

    text_vocab_size: int | None = None  # None: any non-negative id
    num_codebooks: int = fmt.NUM_CODEBOOKS
    codebook_size: int = fmt.CODEBOOK_SIZE

    def check(self, codes: np.ndarray, text: np.ndarray) -> None:
        """Raises ValueError naming what is wrong."""
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks or codes.dtype != np.int16:
            raise ValueError(f"codes are {codes.dtype} {list(codes.shape)}, expected int16 [{self.num_codebooks}, F]")
        if text.ndim != 1 or text.dtype != np.int32:
            raise ValueError(f"text ids are {text.dtype} {list(text.shape)}, expected int32 [T]")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes out of range [{codes.min()}, {codes.max()}], expected [0, {self.codebook_size - 1}]"
            )
        top = self.text_vocab_size
        if text.size and (text.min() < 0 or (top is not None and text.max() >= top)):
            raise ValueError(
                f"text ids out of range [{text.min()}, {text.max()}], expected [0, {top - 1 if top else 'inf'}]"
            )


@attrs.frozen
class _Sample:
    """A sample read from a shard, arrays still encoded: planning and skipping never decode them."""

    where: str  # "<shard>: sample <key>", for errors
    meta: dict
    codes: bytes
    text: bytes

    @property
    def rows(self) -> int:
        return self.meta[fmt.META_ROWS]

    def load(self, limits: SampleLimits) -> SampleRows:
        try:
            codes = np.load(io.BytesIO(self.codes), allow_pickle=False)
            text = np.load(io.BytesIO(self.text), allow_pickle=False)
            limits.check(codes, text)
            rows = sample_rows(codes, text, self.meta)
        except (ValueError, KeyError, TypeError) as e:
            raise CsmAdaptError(f"{self.where}: {e}") from e
        if len(rows) != self.rows:
            raise CsmAdaptError(f"{self.where}: builds {len(rows)} rows, its json says {self.rows}")
        return rows


def _parse(raw: dict, max_rows: int) -> _Sample:
    where = f"{raw['__url__']}: sample {raw['__key__']!r}"
    missing = [m for m in fmt.MEMBERS if m not in raw]
    if missing:
        raise CsmAdaptError(f"{where}: missing member(s) {', '.join(missing)}")
    try:
        meta = json.loads(raw[fmt.META].decode("utf-8"))
        rows = meta[fmt.META_ROWS]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CsmAdaptError(f"{where}: unreadable {fmt.META} member ({e!r})") from None
    if not isinstance(rows, int) or rows < 1:
        raise CsmAdaptError(f"{where}: {fmt.META_ROWS}={rows!r}, expected a positive integer")
    sample = _Sample(where, meta, raw[fmt.CODES], raw[fmt.TEXT])
    if sample.rows > max_rows:
        raise CsmAdaptError(f"{where}: {sample.rows} rows, longer than max_rows={max_rows}")
    return sample


def _read(shards: Iterable[_Shard], on_corrupt: OnCorrupt, *stages) -> Iterable[dict]:
    return wds.DataPipeline(partial(iter, tuple(shards)), partial(_verified_samples, on_corrupt=on_corrupt), *stages)


def _every(samples: Iterable[dict], step: int, offset: int) -> Iterator[dict]:
    return itertools.islice(samples, offset, None, step)


def _plans(samples: Iterable[_Sample], packer: Packer, buffer: int, rng: random.Random | None) -> Iterator[list]:
    """Packs each run of `buffer` samples; the batch order within a buffer is shuffled when `rng`
    is given (planning sorts by length, which would otherwise order batches by size)."""
    it = iter(samples)
    while chunk := list(itertools.islice(it, buffer)):
        plan = packer.plan([s.rows for s in chunk])
        if rng is not None:
            rng.shuffle(plan)
        for batch in plan:
            yield [[chunk[i] for i in seq] for seq in batch]


def _collate(plan: list[list[_Sample]], packer: Packer, limits: SampleLimits) -> Batch:
    rows = [[s.load(limits) for s in seq] for seq in plan]
    ids = [s.meta.get(fmt.META_ID, "?") for seq in plan for s in seq]
    return collate(rows, ids, packer.pad_multiple)


@attrs.frozen
class LoaderState:
    """Batches consumed: in all (`step`) and, per DataLoader worker, (epoch, batches in that epoch)."""

    step: int
    positions: tuple[tuple[int, int], ...]

    @classmethod
    def fresh(cls, workers: int) -> LoaderState:
        return cls(0, ((0, 0),) * workers)

    def advance(self, worker: int, epoch: int, index: int) -> LoaderState:
        positions = list(self.positions)
        positions[worker] = (epoch, index + 1)
        return LoaderState(self.step + 1, tuple(positions))


class _TrainStream(IterableDataset):
    """Runs in each DataLoader worker: its slot's samples -> plans -> (position, Batch), forever."""

    def __init__(
        self,
        split: _Split,
        packer: Packer,
        limits: SampleLimits,
        *,
        seed,
        shuffle_buffer,
        pack_buffer,
        rank,
        world_size,
    ):
        self.split, self.packer, self.limits, self.seed = split, packer, limits, seed
        self.shuffle_buffer, self.pack_buffer = shuffle_buffer, pack_buffer
        self.rank, self.world_size = rank, world_size
        self.start = LoaderState.fresh(1)  # set by TrainLoader before the workers start

    def _samples(self, epoch: int, slot: int, slots: int, rng: random.Random) -> Iterable[_Sample]:
        shards = list(self.split.shards)
        random.Random(f"{self.seed}-{epoch}").shuffle(shards)  # the same order on every rank
        if len(shards) >= slots:
            shards, split = shards[slot::slots], []
        else:
            split = [partial(_every, step=slots, offset=slot)]
        return _read(
            shards,
            self.split.on_corrupt,
            *split,
            wds.shuffle(self.shuffle_buffer, rng=rng),
            wds.map(partial(_parse, max_rows=self.packer.max_rows)),
        )

    def __iter__(self) -> Iterator[tuple[tuple[int, int, int] | None, Batch | _Failure]]:
        try:
            yield from self._batches()
        except CsmAdaptError as e:
            # Handed to the main process as data: raised there as one line, not as a worker traceback.
            yield None, _Failure(type(e), str(e))

    def _batches(self) -> Iterator[tuple[tuple[int, int, int], Batch]]:
        info = get_worker_info()
        worker_id, workers = (info.id, info.num_workers) if info else (0, 1)
        # After a resume at step n the next batch is worker n % W's; the DataLoader always starts
        # with worker 0, so worker ids are rotated to hand that role to worker 0.
        worker = (worker_id + self.start.step) % workers
        slot, slots = self.rank * workers + worker, self.world_size * workers
        epoch, skip = self.start.positions[worker]
        while True:
            rng = random.Random(f"{self.seed}-{epoch}-{slot}")
            for index, plan in enumerate(
                _plans(self._samples(epoch, slot, slots, rng), self.packer, self.pack_buffer, rng)
            ):
                if index >= skip:  # resuming: skipped batches are planned, never decoded
                    yield (worker, epoch, index), _collate(plan, self.packer, self.limits)
            epoch, skip = epoch + 1, 0


@attrs.frozen
class _Failure:
    error_type: type[CsmAdaptError]
    message: str


class TrainLoader:
    """Endless iterator of training batches for one rank; `state` / `load_state` resume it exactly.

    rank/world_size default to torch.distributed's when it is initialised.
    """

    def __init__(
        self,
        data_dir: Path | str | Store,
        packer: Packer,
        *,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        pack_buffer: int = 512,
        num_workers: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
        limits: SampleLimits | None = None,
        on_corrupt: OnCorrupt = "stop",
    ):
        split = _Split.read(data_dir, "train", on_corrupt)
        split.check_fits(packer)
        if rank is None or world_size is None:
            rank, world_size = rank_and_world()
        slots = world_size * max(1, num_workers)
        if split.num_samples < slots:
            raise CsmAdaptError(
                f"{data_dir}: {split.num_samples} training samples for {world_size} rank(s) x"
                f" {max(1, num_workers)} worker(s); every worker needs at least one (use fewer workers)"
            )
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self._stream = _TrainStream(
            split, packer, limits or SampleLimits(), seed=seed, shuffle_buffer=shuffle_buffer, pack_buffer=pack_buffer,
            rank=rank, world_size=world_size,
        )  # fmt: skip
        self.state = LoaderState.fresh(max(1, num_workers))

    def state_dict(self) -> dict:
        return {"step": self.state.step, "positions": [list(p) for p in self.state.positions]}

    def load_state_dict(self, state: dict) -> None:
        positions = tuple((int(e), int(i)) for e, i in state["positions"])
        if len(positions) != len(self.state.positions):
            raise CsmAdaptError(
                f"the data loader state was saved with {len(positions)} worker(s) per rank;"
                f" resume with num_workers={len(positions)} to continue the same batch sequence"
            )
        self.state = LoaderState(int(state["step"]), positions)

    def __iter__(self) -> Iterator[Batch]:
        self._stream.start = self.state
        # A generator of its own: iter(DataLoader) draws a base seed from it, and drawing from torch's
        # global RNG would make a resumed run's RNG state one draw off an uninterrupted run's (the
        # batches do not depend on that seed: every worker seeds its own random.Random).
        loader = DataLoader(
            self._stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        for position, batch in loader:
            if isinstance(batch, _Failure):
                raise batch.error_type(batch.message)
            self.state = self.state.advance(*position)
            yield batch


class ValLoader:
    """The val split, once per iteration, in shard order: the same batches on every rank and call."""

    def __init__(
        self,
        data_dir: Path | str | Store,
        packer: Packer,
        *,
        pack_buffer: int = 512,
        limits: SampleLimits | None = None,
        on_corrupt: OnCorrupt = "stop",
    ):
        self.split = _Split.read(data_dir, "val", on_corrupt)
        self.split.check_fits(packer)
        self.packer, self.pack_buffer, self.limits = packer, pack_buffer, limits or SampleLimits()

    def __iter__(self) -> Iterator[Batch]:
        samples = _read(
            self.split.shards, self.split.on_corrupt, wds.map(partial(_parse, max_rows=self.packer.max_rows))
        )
        for plan in _plans(samples, self.packer, self.pack_buffer, rng=None):
            yield _collate(plan, self.packer, self.limits)
