"""The streaming loader on shards written here per docs/data-format.md: splitting, budgets, determinism, resume,
and damaged shards."""

import contextlib
import io
import json
import signal
import tarfile

import attrs
import numpy as np
import pytest
import torch
from attrs import asdict

from csm_adapt.data.batches import sample_rows
from csm_adapt.data.format import INDEX, INDEX_VERSION, Index, ShardEntry, SplitEntry, dump_index, read_index
from csm_adapt.data.loader import SampleLimits, ShardError, TrainLoader, ValLoader
from csm_adapt.data.packing import Packer
from csm_adapt.data.shard_writer import PreparedSample, file_digest, write_shard
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
            written = write_shard(root / name, shard)
            rows = tuple(s.rows for s in shard)
            frames = sum(s.codes.shape[1] for s in shard)
            entries.append(
                ShardEntry(name=name, samples=count, rows=rows, frames=frames, seconds=0.0, **asdict(written))
            )
        splits[split] = SplitEntry(shards=tuple(entries))
    write_index(root, splits)
    return samples


def write_index(root, splits: dict) -> None:
    index = Index(
        version=INDEX_VERSION, data_hash="x", text_tokenizer="t", audio_codec="c", num_codebooks=K, max_rows=64,
        data={}, splits=splits, summary={},
    )  # fmt: skip
    (root / INDEX).write_text(dump_index(index))


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
    reindex(tmp_path)  # a shard written that way, not damaged later
    with pytest.raises(CsmAdaptError, match=r"train-000000.tar: sample 'orphan': missing member\(s\) codes.npy"):
        take(TrainLoader(tmp_path, PACKER, num_workers=0), 5)


def reindex(root) -> None:
    """Record each shard's current bytes in index.json, as if prepare had written them so."""
    index = read_index(root)
    splits = {}
    for split, entry in index.splits.items():
        shards = []
        for shard in entry.shards:
            with tarfile.open(root / shard.name) as tar:
                samples = len({m.name.split(".", 1)[0] for m in tar.getmembers()})
            written = file_digest(root / shard.name)
            shards.append(attrs.evolve(shard, samples=samples, bytes=written.bytes, sha256=written.sha256))
        splits[split] = SplitEntry(shards=tuple(shards))
    write_index(root, splits)


def member_offsets(path) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of each member of a tar."""
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar.getmembers()]


def test_a_truncated_shard_stops_the_run_before_training_naming_it_and_the_fix(tmp_path):
    write_dataset(tmp_path, {"train": [4, 4, 4], "val": [3]})
    shard = tmp_path / "train-000001.tar"
    _, cut, _ = member_offsets(shard)[6]  # cut at a member boundary: two whole samples remain
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(
        ShardError, match=r"train-000001.tar: damaged shard \(\d+ bytes, index.json says \d+\).*--rebuild"
    ):
        TrainLoader(tmp_path, PACKER, num_workers=0)


def test_a_corrupted_shard_stops_reading_with_one_line_from_a_worker(tmp_path):
    write_dataset(tmp_path, {"train": [4, 4, 4], "val": [3]})
    shard = tmp_path / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    _, header, _ = member_offsets(shard)[3]
    data[header : header + 20] = b"\0" * 20  # tarfile takes the zeroed header for the end of the archive
    shard.write_bytes(bytes(data))
    loader = TrainLoader(tmp_path, PACKER, num_workers=2, shuffle_buffer=4)
    with deadline(60), pytest.raises(ShardError) as caught:
        take(loader, 100)
    message = str(caught.value)
    assert "train-000002.tar: damaged shard (its sha256 differs from index.json)" in message
    assert "\n" not in message and "DataLoader worker" not in message


def test_a_damaged_shard_can_be_skipped_counted_and_reported(tmp_path, capsys):
    samples = write_dataset(tmp_path, {"train": [4, 4, 4], "val": [3]})
    truncated, flipped = tmp_path / "train-000000.tar", tmp_path / "train-000002.tar"
    truncated.write_bytes(truncated.read_bytes()[:-1024])
    data = bytearray(flipped.read_bytes())
    _, _, codes_at = member_offsets(flipped)[0]
    data[codes_at + 200] ^= 0xFF  # a flipped byte inside the first sample's codes
    flipped.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="train-000000.tar"):
        TrainLoader(tmp_path, PACKER, num_workers=0)

    loader = TrainLoader(tmp_path, PACKER, num_workers=0, on_corrupt="skip")
    with deadline(60):
        ids = {i for batch in first_epoch(loader) for i in batch.sample_ids}
    assert ids == {k for k in samples if k.startswith("train_1_")}
    err = capsys.readouterr().err
    assert "skipping (1 so far" in err and "train-000000.tar: damaged shard" in err
    assert "skipping (1 so far" in err and "train-000002.tar: damaged shard (its sha256" in err


def test_reading_batches_draws_nothing_from_torchs_global_rng(tmp_path):
    """A resumed run restores torch's RNG state and then starts the loader again: a draw there would
    leave it one draw off an uninterrupted run's at every resume."""
    write_dataset(tmp_path, {"train": [4, 4], "val": [3]})
    before = torch.get_rng_state()
    with deadline(60):
        take(TrainLoader(tmp_path, PACKER, num_workers=1), 2)
    assert torch.equal(torch.get_rng_state(), before)


def test_out_of_range_codes_are_named_by_shard_and_sample(tmp_path):
    write_dataset(tmp_path, {"train": [3], "val": [3]})
    rng = np.random.default_rng(1)
    codes, text, meta = _sample(rng, "bad")
    codes[5, 1] = -1199
    write_shard(tmp_path / "train-000000.tar", [PreparedSample("bad", codes, text, meta)])
    reindex(tmp_path)
    with pytest.raises(CsmAdaptError, match=r"train-000000.tar: sample 'bad': codes out of range \[-1199, \d+\]"):
        take(TrainLoader(tmp_path, PACKER, num_workers=0), 1)
    text[0] = 5000
    codes[5, 1] = 0
    write_shard(tmp_path / "train-000000.tar", [PreparedSample("bad", codes, text, meta)])
    reindex(tmp_path)
    limits = SampleLimits(text_vocab_size=1024)
    with pytest.raises(CsmAdaptError, match=r"sample 'bad': text ids out of range \[\d+, 5000\], expected \[0, 1023\]"):
        take(TrainLoader(tmp_path, PACKER, num_workers=0, limits=limits), 1)
