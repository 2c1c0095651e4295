"""Streams prepared shards (format: DATA.md) as packed batches within a row budget.

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
"""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import attrs
import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from csm_adapt.data.batches import Batch, SampleRows, collate, sample_rows
from csm_adapt.data.packing import Packer
from csm_adapt.errors import CsmAdaptError

INDEX_VERSION = 1
MEMBERS = ("codes.npy", "text.npy", "json")


def read_index(data_dir: Path) -> dict:
    path = Path(data_dir) / "index.json"
    if not path.is_file():
        raise CsmAdaptError(f"{path}: not found; run `csm-adapt prepare` first")
    index = json.loads(path.read_text("utf-8"))
    if index.get("version") != INDEX_VERSION:
        raise CsmAdaptError(f"{path}: version {index.get('version')!r}, this csm-adapt reads {INDEX_VERSION}")
    return index


@attrs.frozen
class _Split:
    """The non-empty shards of one split, from index.json."""

    paths: tuple[str, ...]
    num_samples: int
    longest: int  # rows of the longest sample

    @classmethod
    def read(cls, data_dir: Path, split: str) -> _Split:
        shards = read_index(data_dir)["splits"].get(split, {}).get("shards", [])
        shards = [s for s in shards if s["samples"] > 0]
        if not shards:
            raise CsmAdaptError(f"{Path(data_dir) / 'index.json'}: split {split!r} has no samples")
        return cls(
            paths=tuple(str(Path(data_dir) / s["name"]) for s in shards),
            num_samples=sum(s["samples"] for s in shards),
            longest=max(max(s["rows"]) for s in shards),
        )

    def check_fits(self, packer: Packer) -> None:
        # Fail before training starts rather than at the first long sample, maybe hours in.
        if self.longest > packer.max_rows:
            raise CsmAdaptError(
                f"the prepared data hold samples of {self.longest} rows, longer than max_rows={packer.max_rows}"
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
        return self.meta["rows"]

    def load(self) -> SampleRows:
        try:
            codes = np.load(io.BytesIO(self.codes), allow_pickle=False)
            text = np.load(io.BytesIO(self.text), allow_pickle=False)
            rows = sample_rows(codes, text, self.meta)
        except (ValueError, KeyError) as e:
            raise CsmAdaptError(f"{self.where}: {e}") from e
        if len(rows) != self.rows:
            raise CsmAdaptError(f"{self.where}: builds {len(rows)} rows, its json says {self.rows}")
        return rows


def _parse(raw: dict, max_rows: int) -> _Sample:
    where = f"{raw['__url__']}: sample {raw['__key__']!r}"
    missing = [m for m in MEMBERS if m not in raw]
    if missing:
        raise CsmAdaptError(f"{where}: missing member(s) {', '.join(missing)}")
    sample = _Sample(where, json.loads(raw["json"].decode("utf-8")), raw["codes.npy"], raw["text.npy"])
    if sample.rows > max_rows:
        raise CsmAdaptError(f"{where}: {sample.rows} rows, longer than max_rows={max_rows}")
    return sample


def _read(paths: Iterable[str], *stages) -> Iterable[dict]:
    return wds.DataPipeline(wds.SimpleShardList(list(paths)), wds.tarfile_to_samples(), *stages)


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


def _collate(plan: list[list[_Sample]], packer: Packer) -> Batch:
    rows = [[s.load() for s in seq] for seq in plan]
    ids = [s.meta["id"] for seq in plan for s in seq]
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

    def __init__(self, split: _Split, packer: Packer, *, seed, shuffle_buffer, pack_buffer, rank, world_size):
        self.split, self.packer, self.seed = split, packer, seed
        self.shuffle_buffer, self.pack_buffer = shuffle_buffer, pack_buffer
        self.rank, self.world_size = rank, world_size
        self.start = LoaderState.fresh(1)  # set by TrainLoader before the workers start

    def _samples(self, epoch: int, slot: int, slots: int, rng: random.Random) -> Iterable[_Sample]:
        paths = list(self.split.paths)
        random.Random(f"{self.seed}-{epoch}").shuffle(paths)  # the same order on every rank
        if len(paths) >= slots:
            paths, split = paths[slot::slots], []
        else:
            split = [partial(_every, step=slots, offset=slot)]
        return _read(
            paths,
            *split,
            wds.shuffle(self.shuffle_buffer, rng=rng),
            wds.map(partial(_parse, max_rows=self.packer.max_rows)),
        )

    def __iter__(self) -> Iterator[tuple[tuple[int, int, int], Batch]]:
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
                    yield (worker, epoch, index), _collate(plan, self.packer)
            epoch, skip = epoch + 1, 0


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TrainLoader:
    """Endless iterator of training batches for one rank; `state` / `load_state` resume it exactly.

    rank/world_size default to torch.distributed's when it is initialised.
    """

    def __init__(
        self,
        data_dir: Path,
        packer: Packer,
        *,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        pack_buffer: int = 512,
        num_workers: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
    ):
        split = _Split.read(data_dir, "train")
        split.check_fits(packer)
        if rank is None or world_size is None:
            rank, world_size = _distributed()
        slots = world_size * max(1, num_workers)
        if split.num_samples < slots:
            raise CsmAdaptError(
                f"{data_dir}: {split.num_samples} training samples for {world_size} rank(s) x"
                f" {max(1, num_workers)} worker(s); every worker needs at least one (use fewer workers)"
            )
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self._stream = _TrainStream(
            split, packer, seed=seed, shuffle_buffer=shuffle_buffer, pack_buffer=pack_buffer,
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
        # A generator of its own: creating the iterator draws a base seed (unused: the stream seeds
        # itself), which must not move torch's global RNG, or a resumed run, which creates it after
        # restoring that RNG, would draw other numbers than the uninterrupted run.
        loader = DataLoader(
            self._stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            generator=torch.Generator(),
        )  # fmt: skip
        for (worker, epoch, index), batch in loader:
            self.state = self.state.advance(worker, epoch, index)
            yield batch


class ValLoader:
    """The val split, once per iteration, in shard order: the same batches on every rank and call."""

    def __init__(self, data_dir: Path, packer: Packer, *, pack_buffer: int = 512):
        self.split = _Split.read(data_dir, "val")
        self.split.check_fits(packer)
        self.packer, self.pack_buffer = packer, pack_buffer

    def __iter__(self) -> Iterator[Batch]:
        samples = _read(self.split.paths, wds.map(partial(_parse, max_rows=self.packer.max_rows)))
        for plan in _plans(samples, self.packer, self.pack_buffer, rng=None):
            yield _collate(plan, self.packer)
