"""The streaming loader on shards written here per DATA.md: splitting, budgets, determinism, resume."""

import contextlib
import io
import json
import signal
import tarfile

import numpy as np
import pytest
import torch

from csm_adapt.data.batches import sample_rows
from csm_adapt.data.loader import TrainLoader, ValLoader
from csm_adapt.data.packing import Packer
from csm_adapt.data.shard_writer import PreparedSample, write_shard
from csm_adapt.errors import CsmAdaptError

K = 32
PACKER = Packer(max_rows=64, rows_per_batch=160, pad_multiple=8)


def _sample(rng: np.random.Generator, sample_id: str):
    turns = []
    for _ in range(rng.integers(1, 3)):
        t, f = int(rng.integers(2, 7)), int(rng.integers(2, 13))
        turns.append({"speaker": 0, "text": "x", "text_tokens": t, "frames": f, "target": bool(rng.integers(0, 4)),
                      "audio": "a.wav", "start": None, "end": None})  # fmt: skip
    turns[-1]["target"] = True
    codes = rng.integers(0, 2048, (K, sum(t["frames"] for t in turns))).astype(np.int16)
    text = rng.integers(0, 1024, sum(t["text_tokens"] for t in turns)).astype(np.int32)
    meta = {"id": sample_id, "source": "meta.jsonl:1", "turns": turns,
            "rows": sum(t["text_tokens"] + t["frames"] + 1 for t in turns)}  # fmt: skip
    return codes, text, meta


def write_dataset(root, shards: dict[str, list[int]], seed: int = 0) -> dict:
    """Shards of the given sample counts per split, and index.json. Returns {id: (codes, text, meta)}."""
    rng = np.random.default_rng(seed)
    samples, splits = {}, {}
    for split, counts in shards.items():
        entries = []
        for n, count in enumerate(counts):
            name = f"{split}-{n:06d}.tar"
            shard = []
            for i in range(count):
                key = f"{split}_{n}_{i}"
                codes, text, meta = samples[key] = _sample(rng, key)
                shard.append(PreparedSample(key, codes, text, meta))
            write_shard(root / name, shard)
            rows = [s.rows for s in shard]
            entries.append({"name": name, "samples": count, "rows": rows, "frames": 0, "seconds": 0.0})
        splits[split] = {"shards": entries}
    index = {"version": 1, "data_hash": "x", "num_codebooks": K, "max_rows": 64, "splits": splits, "summary": {}}
    (root / "index.json").write_text(json.dumps(index))
    return samples


@contextlib.contextmanager
def deadline(seconds: int):
    """A hang (e.g. a worker left without data) fails the test instead of blocking the suite."""

    def fail(*_):
        raise TimeoutError(f"no result within {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def first_epoch(loader: TrainLoader) -> list:
    """Batches of epoch 0, read until every worker has moved on to epoch 1."""
    batches, moved_on = [], set()
    before = loader.state.positions
    for batch in loader:
        after = loader.state.positions
        (worker,) = [w for w in range(len(after)) if after[w] != before[w]]
        before = after
        if after[worker][0] == 0:
            batches.append(batch)
        else:
            moved_on.add(worker)
            if len(moved_on) == len(after):
                return batches


def take(loader, n: int) -> list:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            return batches


def same(a, b) -> bool:
    return (
        a.sample_ids == b.sample_ids and torch.equal(a.tokens, b.tokens) and torch.equal(a.target_mask, b.target_mask)
    )


@pytest.mark.parametrize("counts", [[5] * 10, [21], [7, 7, 7]], ids=["10-shards", "1-shard", "3-shards"])
def test_each_sample_once_per_epoch_across_2_ranks_x_2_workers(tmp_path, counts):
    samples = write_dataset(tmp_path, {"train": counts, "val": [3]})
    train_ids = sorted(k for k in samples if k.startswith("train"))
    seen = []
    with deadline(60):
        for rank in range(2):
            loader = TrainLoader(tmp_path, PACKER, seed=3, num_workers=2, rank=rank, world_size=2, shuffle_buffer=8)
            seen += [i for batch in first_epoch(loader) for i in batch.sample_ids]
    assert sorted(seen) == train_ids


def test_batches_respect_budget_and_hold_the_shard_contents(tmp_path):
    samples = write_dataset(tmp_path, {"train": [9, 9, 9], "val": [3]})
    with deadline(60):
        batches = take(TrainLoader(tmp_path, PACKER, num_workers=0, pack_buffer=16), 12)
    for batch in batches:
        b, s, _ = batch.tokens.shape
        assert s % PACKER.pad_multiple == 0 and (b * s <= PACKER.rows_per_batch or b == 1)
        real = batch.mask.any(-1).sum(-1)
        assert real.max() <= PACKER.max_rows and int(real.sum()) == batch.num_rows
        assert batch.num_frames == int(batch.target_mask.sum())
        # The first sample of the first sequence, decoded from its shard, is the rows of its arrays.
        expected = sample_rows(*samples[batch.sample_ids[0]])
        n = len(expected)
        assert torch.equal(batch.tokens[0, :n], expected.tokens) and torch.equal(batch.mask[0, :n], expected.mask)
        assert torch.equal(batch.target_mask[0, :n], expected.target_mask)
        assert torch.equal(batch.input_pos[0, :n], torch.arange(n)) and batch.doc_ids[0, n] == 1
    assert max(b.num_samples for b in batches) > 2  # packing does put several samples together


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches_other_seed_other_order(tmp_path, workers):
    write_dataset(tmp_path, {"train": [6] * 4, "val": [3]})
    with deadline(60):
        a = take(TrainLoader(tmp_path, PACKER, seed=1, num_workers=workers), 10)
        b = take(TrainLoader(tmp_path, PACKER, seed=1, num_workers=workers), 10)
        c = take(TrainLoader(tmp_path, PACKER, seed=2, num_workers=workers), 10)
    assert all(same(x, y) for x, y in zip(a, b))
    assert [x.sample_ids for x in a] != [x.sample_ids for x in c]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_the_batches_an_uninterrupted_run_would(tmp_path, workers):
    write_dataset(tmp_path, {"train": [5, 6, 5], "val": [3]})
    loader = lambda: TrainLoader(tmp_path, PACKER, seed=4, num_workers=workers, rank=1, world_size=2)  # noqa: E731
    with deadline(60):
        full = take(loader(), 17)
        first = loader()
        take(first, 7)  # odd: the next batch belongs to the second worker
        state = json.loads(json.dumps(first.state_dict()))
        resumed = loader()
        resumed.load_state_dict(state)
        rest = take(resumed, 10)
    assert max(e for e, _ in resumed.state.positions) >= 1  # the comparison crosses an epoch boundary
    assert all(same(x, y) for x, y in zip(full[7:], rest))


def test_resume_refuses_another_worker_count(tmp_path):
    write_dataset(tmp_path, {"train": [6, 6], "val": [3]})
    state = TrainLoader(tmp_path, PACKER, num_workers=2).state_dict()
    with pytest.raises(CsmAdaptError, match="num_workers=2"):
        TrainLoader(tmp_path, PACKER, num_workers=0).load_state_dict(state)


def test_validation_is_the_whole_split_in_the_same_order_every_time(tmp_path):
    samples = write_dataset(tmp_path, {"train": [4], "val": [7, 6]})
    first, second = list(ValLoader(tmp_path, PACKER)), list(ValLoader(tmp_path, PACKER))
    assert len(first) == len(second) and all(same(x, y) for x, y in zip(first, second))
    ids = [i for b in first for i in b.sample_ids]
    assert sorted(ids) == sorted(k for k in samples if k.startswith("val"))
    # A smaller pack buffer packs fewer samples together, and still gives the whole split.
    small = list(ValLoader(tmp_path, PACKER, pack_buffer=2))
    assert len(small) > len(first)
    assert sorted(i for b in small for i in b.sample_ids) == sorted(ids)


def test_too_few_samples_for_the_workers_is_a_clear_error(tmp_path):
    write_dataset(tmp_path, {"train": [3], "val": [3]})
    with pytest.raises(CsmAdaptError, match="3 training samples for 2 rank"):
        TrainLoader(tmp_path, PACKER, num_workers=2, rank=0, world_size=2)


def test_samples_longer_than_max_rows_are_refused_up_front(tmp_path):
    write_dataset(tmp_path, {"train": [6], "val": [3]})
    with pytest.raises(CsmAdaptError, match="longer than max_rows=8"):
        TrainLoader(tmp_path, Packer(max_rows=8, rows_per_batch=16, pad_multiple=8), num_workers=0)


def test_missing_member_names_shard_and_key(tmp_path):
    write_dataset(tmp_path, {"train": [2], "val": [3]})
    orphan = b'{"id": "orphan", "turns": [], "rows": 1}'
    with tarfile.open(tmp_path / "train-000000.tar", "a") as tar:
        info = tarfile.TarInfo("orphan.json")
        info.size = len(orphan)
        tar.addfile(info, io.BytesIO(orphan))
    with pytest.raises(CsmAdaptError, match=r"train-000000.tar: sample 'orphan': missing member\(s\) codes.npy"):
        take(TrainLoader(tmp_path, PACKER, num_workers=0), 5)
