"""`prepare`: shards, index and rejects on good and broken clips; resume; the data-hash guard."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from click.testing import CliRunner
from rich.console import Console

from csm_adapt.cli import cli
from csm_adapt.config.schema import DataConfig, ModelConfig, ReaderRef
from csm_adapt.data import prepare as prepare_module
from csm_adapt.data.encode import Frontend
from csm_adapt.data.loader import TrainLoader
from csm_adapt.data.packing import Packer
from csm_adapt.data.prepare import data_hash, prepare, prepared_is_current
from csm_adapt.data.splits import split_samples
from csm_adapt.errors import CsmAdaptError
from csm_adapt.model.audio_codec import AudioCodec
from csm_adapt.model.text_tokenizer import TextTokenizer
from csm_adapt.plugin_api import Sample, Turn
from csm_adapt_plugins.conversation_reader import ConversationOptions, ConversationReader
from csm_adapt_plugins.json_reader import JsonOptions, JsonReader
from lock_holder import lock_held_elsewhere

MODEL = ModelConfig(text_tokenizer="offline", audio_codec="offline")
QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def frontend() -> Frontend:
    return Frontend(TextTokenizer.load("offline"), AudioCodec.load("offline"))


def tone(path: Path, seconds: float, rate: int = 16_000, channels: int = 1) -> Path:
    """A short noisy tone; noise makes the codes vary from frame to frame."""
    rng = np.random.default_rng(len(path.name))
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)
    data = np.stack([wav, 0.5 * wav], axis=1) if channels == 2 else wav
    sf.write(path, data.astype(np.float32), rate)
    return path


@pytest.fixture
def clips(tmp_path) -> Path:
    """A folder of good and broken clips with JSONL metadata naming them by relative path."""
    root = tmp_path / "set"
    root.mkdir()
    tone(root / "mono16k.wav", 0.3)
    tone(root / "stereo44k.wav", 0.25, rate=44_100, channels=2)
    tone(root / "flac.flac", 0.2, rate=24_000)
    tone(root / "long.wav", 2.0)
    sf.write(root / "silent.wav", np.zeros(4000, np.float32), 16_000)
    sf.write(root / "empty.wav", np.zeros(0, np.float32), 16_000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    rows = [
        {"text": "Bonjour, ça va ?", "path": "mono16k.wav", "speaker": 0},
        {"text": "« Où est la gare ? »", "path": "stereo44k.wav", "speaker": 1},
        {"text": "NA", "path": "flac.flac"},
        {"text": "Un extrait.", "path": "long.wav", "start": 0.5, "end": 0.8, "speaker": 1},
        {"text": "Manquant.", "path": "missing.wav"},
        {"text": "Cassé.", "path": "corrupt.wav"},
        {"text": "Vide.", "path": "empty.wav"},
        {"text": "Rien.", "path": "silent.wav"},
        {"text": "   ", "path": "mono16k.wav", "id": "blank"},
        {"text": "À l'envers.", "path": "long.wav", "start": 2.0, "end": 1.0},
        {"text": "Trop loin.", "path": "long.wav", "start": 3.0},
        {"text": "Beaucoup trop long pour la limite.", "path": "long.wav", "id": "toolong"},
        {"text": "Encore.", "path": "flac.flac", "id": "mono16k"},  # the first clip's id again
    ]
    (root / "meta.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return root


def json_data(meta: Path, out: Path, **settings) -> DataConfig:
    reader = ReaderRef("json", JsonOptions(path=meta), JsonReader)
    return DataConfig(reader=reader, out=out, **{"max_rows": 30, "val_fraction": 0.0, **settings})


def read_tar(path: Path) -> list[dict]:
    """The samples of a shard, read with plain tarfile + numpy (no webdataset)."""
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            data = tar.extractfile(member).read()
            value = json.loads(data) if ext == "json" else np.load(io.BytesIO(data), allow_pickle=False)
            samples.setdefault(key, {})[ext] = value
    return list(samples.values())


def test_prepare_keeps_good_clips_rejects_bad_ones_and_the_numbers_match(clips, tmp_path, frontend):
    data = json_data(clips / "meta.jsonl", tmp_path / "out", shard_samples=5)
    index = prepare(data, MODEL, console=QUIET, frontend=frontend)
    out = data.out

    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text("utf-8").splitlines()]
    reasons = {r["source"].rsplit(":", 1)[1]: r["reason"] for r in rejects}
    assert reasons == {
        "5": "missing",
        "6": "corrupt",
        "7": "empty audio",
        "8": "silent",
        "9": "empty text",
        "10": "bad span",
        "11": "bad span",
        "12": "too long",
        "13": "duplicate id",
    }
    assert all(r["audio"] and r["detail"] and r["id"] for r in rejects)

    samples = [s for shard in index["splits"]["train"]["shards"] for s in read_tar(out / shard["name"])]
    assert [s["json"]["id"] for s in samples] == ["mono16k", "stereo44k", "flac", "long@0.5"]
    for s in samples:
        (turn,) = s["json"]["turns"]
        assert s["codes.npy"].dtype == np.int16 and s["codes.npy"].shape == (32, turn["frames"])
        assert s["text.npy"].dtype == np.int32 and len(s["text.npy"]) == turn["text_tokens"]
        assert s["text.npy"].tolist() == frontend.tokenizer.encode(turn["text"], turn["speaker"])
        assert s["json"]["rows"] == turn["text_tokens"] + turn["frames"] + 1
    # Stereo 44.1 kHz is down-mixed and resampled: 0.25 s at 24 kHz is 6000 samples, 4 frames.
    assert samples[1]["json"]["turns"][0]["frames"] == math.ceil(6000 / 1920)
    assert samples[3]["json"]["turns"][0] | {"text": None} == {
        "speaker": 1, "text": None, "text_tokens": samples[3]["json"]["turns"][0]["text_tokens"],
        "frames": math.ceil(0.3 * 24_000 / 1920), "target": True,
        "audio": str(clips / "long.wav"), "start": 0.5, "end": 0.8,
    }  # fmt: skip
    assert samples[2]["json"]["turns"][0]["speaker"] is None
    assert len(np.unique(samples[0]["codes.npy"][0])) > 1  # real codes, not all zeros

    shards = index["splits"]["train"]["shards"]
    assert [s["samples"] for s in shards] == [4, 0, 0]  # 12 samples (after the duplicate), 5 a shard
    assert [r for s in shards for r in s["rows"]] == [s["json"]["rows"] for s in samples]
    assert sum(s["frames"] for s in shards) == sum(s["codes.npy"].shape[1] for s in samples)
    summary = index["summary"]
    assert summary["kept"] == {"train": 4, "val": 0}
    assert summary["samples_read"] == 13 and summary["rejected"] == 9
    assert summary["rejected_by_reason"] == {
        "bad span": 2, "corrupt": 1, "duplicate id": 1, "empty audio": 1, "empty text": 1,
        "missing": 1, "silent": 1, "too long": 1,
    }  # fmt: skip
    assert summary["rows"] == sum(s["json"]["rows"] for s in samples)
    assert summary["frames"] == sum(s["codes.npy"].shape[1] for s in samples)
    assert summary["hours"] == pytest.approx((0.3 + 0.25 + 0.2 + 0.3) / 3600, abs=1e-4)
    assert summary["clips"] == 4 and index["timings"]["clips_per_s"] > 0
    assert "timings" not in json.loads((out / "index.json").read_text())  # returned, never stored
    # The speaking rate the `stopping` evaluator expects: characters of (normalized) text per second.
    chars = sum(len(s["json"]["turns"][0]["text"].strip()) for s in samples)
    assert summary["chars_per_second"] == pytest.approx(chars / (0.3 + 0.25 + 0.2 + 0.3), rel=1e-3)
    assert index["text_tokenizer"] == frontend.tokenizer.identity
    assert index["audio_codec"] == frontend.codec.identity
    assert index["data_hash"] == data_hash(data, MODEL)
    assert not (out / ".progress").exists()

    # The same shards through plain webdataset.
    urls = [str(out / s["name"]) for s in shards]
    read = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
    assert [r["__key__"] for r in read] == ["mono16k", "stereo44k", "flac", "long_0_5"]
    assert all(np.array_equal(r["codes.npy"], s["codes.npy"]) for r, s in zip(read, samples))


def test_conversations_split_at_turn_boundaries(tmp_path, frontend):
    for name in ("a", "b", "c", "d"):
        tone(tmp_path / f"{name}.wav", 0.4)  # 5 frames + text: about 15 rows a turn
    tone(tmp_path / "long.wav", 3.0)

    def turn(name, speaker, **extra):
        return {"speaker": speaker, "text": f"Tour {name}.", "path": f"{name}.wav", **extra}

    dialogues = [
        {"id": "d1", "turns": [turn("a", 0), turn("b", 1), turn("c", 0), turn("d", 1)]},
        {"id": "d2", "turns": [turn("a", 0), turn("long", 1)]},
        {"id": "d3", "turns": [turn("a", 0, target=False), turn("b", 1, target=False), turn("c", 0)]},
    ]
    meta = tmp_path / "d.jsonl"
    meta.write_text("".join(json.dumps(d) + "\n" for d in dialogues))
    reader = ReaderRef("conversation", ConversationOptions(path=meta), ConversationReader)
    data = DataConfig(reader=reader, out=tmp_path / "out", max_rows=40, val_fraction=0.0)
    index = prepare(data, MODEL, console=QUIET, frontend=frontend)

    samples = read_tar(data.out / "train-000000.tar")
    pieces = {s["json"]["id"]: [t["audio"].rsplit("/", 1)[1] for t in s["json"]["turns"]] for s in samples}
    assert pieces == {"d1-part0": ["a.wav", "b.wav"], "d1-part1": ["c.wav", "d.wav"], "d3-part1": ["c.wav"]}
    for s in samples:
        turns = s["json"]["turns"]
        assert s["json"]["rows"] == sum(t["text_tokens"] + t["frames"] + 1 for t in turns) <= 40
        assert s["codes.npy"].shape[1] == sum(t["frames"] for t in turns)
        assert len(s["text.npy"]) == sum(t["text_tokens"] for t in turns)
    assert [t["speaker"] for t in samples[0]["json"]["turns"]] == [0, 1]
    lines = (data.out / "rejects.jsonl").read_text().splitlines()
    rejects = {(r["id"], r["reason"]) for r in map(json.loads, lines)}
    assert rejects == {("d2", "too long"), ("d3-part0", "no target turn")}
    assert index["summary"]["rejected_by_reason"] == {"no target turn": 1, "too long": 1}


def shard_bytes(out: Path) -> dict[str, bytes]:
    """Every file prepare left in `out` (shards, index.json, rejects.jsonl: nothing else)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_killed_run_resumes_without_redoing_shards_and_ends_identical(clips, tmp_path, frontend, monkeypatch):
    whole = json_data(clips / "meta.jsonl", tmp_path / "whole", shard_samples=3, val_fraction=0.25)
    prepare(whole, MODEL, console=QUIET, frontend=frontend)

    resumed = json_data(clips / "meta.jsonl", tmp_path / "resumed", shard_samples=3, val_fraction=0.25)
    real_write = prepare_module.write_shard
    written: list[str] = []

    def write_then_die(path, samples):
        if len(written) == 2:
            raise KeyboardInterrupt  # killed while encoding the third shard
        result = real_write(path, samples)
        written.append(path.name)
        return result

    monkeypatch.setattr(prepare_module, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(resumed, MODEL, console=QUIET, frontend=frontend)
    assert not (resumed.out / "index.json").exists() and not prepared_is_current(resumed, MODEL)
    assert sorted(p.name for p in resumed.out.glob("*.tar")) == written

    written.clear()

    def write_and_note(path, samples):
        result = real_write(path, samples)
        written.append(path.name)
        return result

    monkeypatch.setattr(prepare_module, "write_shard", write_and_note)
    index = prepare(resumed, MODEL, console=QUIET, frontend=frontend)
    assert written == ["train-000002.tar", "val-000000.tar"]  # the first two were kept
    assert shard_bytes(resumed.out) == shard_bytes(whole.out)
    assert len(shard_bytes(whole.out)) == 6  # 9 train + 3 val samples, 3 a shard, + rejects and index
    whole_index = json.loads((whole.out / "index.json").read_text())
    assert index["splits"] == whole_index["splits"] and index["summary"]["kept"] == whole_index["summary"]["kept"]


def test_a_changed_data_recipe_is_refused_unless_rebuilt(clips, tmp_path, frontend):
    data = json_data(clips / "meta.jsonl", tmp_path / "out")
    prepare(data, MODEL, console=QUIET, frontend=frontend)
    assert prepared_is_current(data, MODEL)
    faster = json_data(clips / "meta.jsonl", tmp_path / "out", encode_batch_seconds=1.0)
    assert prepared_is_current(faster, MODEL)  # batching is speed, not data

    longer = json_data(clips / "meta.jsonl", tmp_path / "out", max_rows=200)
    assert not prepared_is_current(longer, MODEL)
    with pytest.raises(CsmAdaptError, match=r"another data recipe .*changed: max_rows\).*--rebuild"):
        prepare(longer, MODEL, console=QUIET, frontend=frontend)
    index = prepare(longer, MODEL, rebuild=True, console=QUIET, frontend=frontend)
    assert index["summary"]["kept"]["train"] == 5  # the 2 s clip now fits
    assert prepared_is_current(longer, MODEL) and not prepared_is_current(data, MODEL)


def samples_of(speakers: list[int]) -> list[Sample]:
    return [Sample(f"c{i}", (Turn(s, "x", Path(f"{i}.wav")),), f"m:{i}") for i, s in enumerate(speakers)]


def test_val_split_is_seeded_order_independent_and_can_hold_out_speakers():
    samples = samples_of([i % 5 for i in range(50)])
    train, val = split_samples(samples, 0.1, "clip", seed=0)
    assert len(val) == 5 and len(train) == 45
    assert [s.id for s in train + val] != [s.id for s in samples]  # a real choice, not the tail
    _, val_reversed = split_samples(samples[::-1], 0.1, "clip", seed=0)
    assert {s.id for s in val_reversed} == {s.id for s in val}
    assert {s.id for s in split_samples(samples, 0.1, "clip", seed=1)[1]} != {s.id for s in val}

    train, val = split_samples(samples, 0.2, "speaker", seed=0)
    held_out = {s.turns[0].speaker for s in val}
    assert len(held_out) == 1 and len(val) == 10
    assert not held_out & {s.turns[0].speaker for s in train}
    assert split_samples(samples, 0.0, "clip", seed=0) == (samples, [])
    assert len(split_samples(samples[:3], 0.02, "clip", seed=0)[1]) == 1  # at least one


def test_explicit_val_reader(clips, tmp_path, frontend):
    val_meta = tmp_path / "val.jsonl"
    # Relative to the metadata file's folder: a reader refuses absolute paths unless told otherwise.
    audio = str((clips / "flac.flac").relative_to(tmp_path))
    val_meta.write_text(json.dumps({"text": "Validation.", "path": audio, "id": "v1"}) + "\n")
    val_reader = ReaderRef("json", JsonOptions(path=val_meta), JsonReader)
    data = json_data(clips / "meta.jsonl", tmp_path / "out", val_fraction=0.5, val_reader=val_reader)
    index = prepare(data, MODEL, console=QUIET, frontend=frontend)
    assert index["summary"]["kept"] == {"train": 4, "val": 1}
    assert [s["json"]["id"] for s in read_tar(data.out / "val-000000.tar")] == ["v1"]


RECIPE = """
plugins = ["toy_loss.py"]
[model]
text_tokenizer = "offline"
audio_codec = "offline"
[data]
out = "{out}"
max_rows = 30
val_fraction = 0.0
[data.reader]
name = "json"
path = "{meta}"
[loss]
strategy = "toy"
[output]
run_dir = "{out}/run"
"""


def test_prepare_command(clips, tmp_path, frontend, monkeypatch):
    monkeypatch.setattr(prepare_module, "_load_frontend", lambda model, device: frontend)  # built once
    (tmp_path / "toy_loss.py").write_text(
        "from csm_adapt import hookimpl\n\n"
        "@hookimpl\ndef register_loss_strategies(register):\n    register('toy', object)\n"
    )
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(out=tmp_path / "out", meta=clips / "meta.jsonl"))
    runner = CliRunner()
    first = runner.invoke(cli, ["prepare", str(recipe), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert "rejected" in first.output and "missing" in first.output
    assert json.loads((tmp_path / "out" / "index.json").read_text())["summary"]["kept"]["train"] == 4

    again = runner.invoke(cli, ["prepare", str(recipe)])
    assert again.exit_code == 0 and "up to date" in again.output

    changed = runner.invoke(cli, ["prepare", str(recipe), "data.seed=3"])
    assert changed.exit_code == 2
    assert "changed: seed" in changed.output and "--rebuild" in changed.output


def test_malformed_metadata_lines_are_rejected_unless_most_are(tmp_path, frontend):
    root = tmp_path / "set"
    root.mkdir()
    for name in ("a", "b", "c"):
        tone(root / f"{name}.wav", 0.2)
    tone(root / "blip.wav", 0.001)  # 1 ms: a clip, yet nothing to learn from
    good = [json.dumps({"text": f"Clip {n}.", "path": f"{n}.wav"}) for n in ("a", "b", "c", "blip")]
    meta = root / "meta.jsonl"
    meta.write_text("\n".join([good[0], '{"text": "cut short", "path": ', *good[1:]]) + "\n", "utf-8")
    index = prepare(json_data(meta, tmp_path / "out"), MODEL, console=QUIET, frontend=frontend)
    assert index["summary"]["kept"]["train"] == 3
    assert index["summary"]["rejected_by_reason"] == {"malformed": 1, "too short": 1}
    malformed, blip = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert malformed["source"] == f"{meta}:2" and malformed["detail"].startswith(f"{meta}:2: invalid JSON")
    assert "blip.wav: 0.001 s, shorter than data.min_clip_seconds=0.16" in blip["detail"]

    meta.write_text("\n".join([good[0], "a|b|c", "d|e|f"]) + "\n", "utf-8")  # the wrong layout altogether
    with pytest.raises(CsmAdaptError, match=r"2 of 3 metadata records are malformed.*max_malformed_share=0.25"):
        prepare(json_data(meta, tmp_path / "out2"), MODEL, console=QUIET, frontend=frontend)
    assert not (tmp_path / "out2" / "index.json").exists()


def test_a_prepare_that_keeps_nothing_fails_counting_the_reject_reasons(clips, tmp_path, frontend, monkeypatch):
    meta = tmp_path / "nothing.jsonl"
    rows = [{"text": "Manquant.", "path": "missing.wav"}, {"text": "Absent.", "path": "gone.wav"}]
    rows.append({"text": "Cassé.", "path": "corrupt.wav"})
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (clips / "nothing.jsonl").write_text(meta.read_text())
    data = json_data(clips / "nothing.jsonl", tmp_path / "out")
    expected = (
        f"{data.out}: the prepared data kept no train samples: 3 samples read, 3 rejected (corrupt: 1, missing: 2); "
        f"why, clip by clip: {data.out / 'rejects.jsonl'}"
    )
    with pytest.raises(CsmAdaptError) as error:
        prepare(data, MODEL, console=QUIET, frontend=frontend)
    assert str(error.value) == expected
    assert len((data.out / "rejects.jsonl").read_text().splitlines()) == 3
    # Prepared again (as `run` does), and by the loader: the same summary, never "split has no samples".
    with pytest.raises(CsmAdaptError) as again:
        prepare(data, MODEL, console=QUIET, frontend=frontend)
    assert str(again.value) == expected
    with pytest.raises(CsmAdaptError) as loading:
        TrainLoader(data.out, Packer(max_rows=30, rows_per_batch=64, pad_multiple=2))
    assert str(loading.value) == expected

    monkeypatch.setattr(prepare_module, "_load_frontend", lambda model, device: frontend)
    (tmp_path / "toy_loss.py").write_text(
        "from csm_adapt import hookimpl\n\n"
        "@hookimpl\ndef register_loss_strategies(register):\n    register('toy', object)\n"
    )
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(out=tmp_path / "cli-out", meta=clips / "nothing.jsonl"))
    result = CliRunner().invoke(cli, ["prepare", str(recipe)])
    assert result.exit_code == 2
    assert "kept no train samples: 3 samples read, 3 rejected (corrupt: 1, missing: 2)" in result.output


def test_one_prepare_per_folder_and_leftovers_of_a_killed_one_are_cleaned(tmp_path, frontend):
    root = tmp_path / "set"
    root.mkdir()
    tone(root / "a.wav", 0.2)
    meta = root / "meta.jsonl"
    meta.write_text(json.dumps({"text": "Un.", "path": "a.wav"}) + "\n", "utf-8")
    data = json_data(meta, tmp_path / "out")
    data.out.mkdir()
    stale = [data.out / ".train-000004.tar.999999.tmp", data.out / ".rejects.jsonl.999999.tmp"]
    for path in stale:
        path.write_bytes(b"left by a killed prepare")
    with lock_held_elsewhere(data.out) as pid:
        with pytest.raises(CsmAdaptError, match=rf"out is in use by another csm-adapt prepare \(PID {pid}\)"):
            prepare(data, MODEL, console=QUIET, frontend=frontend)
        assert all(path.exists() for path in stale)  # refused: nothing touched
    prepare(data, MODEL, console=QUIET, frontend=frontend)
    assert sorted(p.name for p in data.out.iterdir()) == ["index.json", "rejects.jsonl", "train-000000.tar"]


def test_a_full_disk_stops_prepare_with_one_line_and_keeps_the_finished_shards(clips, tmp_path, frontend, monkeypatch):
    import errno

    data = json_data(clips / "meta.jsonl", tmp_path / "out", shard_samples=2)
    real_write = prepare_module.write_shard

    def write_until_full(path, samples):
        if path.name == "train-000001.tar":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, samples)

    monkeypatch.setattr(prepare_module, "write_shard", write_until_full)
    with pytest.raises(CsmAdaptError) as caught:
        prepare(data, MODEL, console=QUIET, frontend=frontend)
    message = str(caught.value)
    assert f"could not write {data.out / 'train-000001.tar'}: no space left" in message
    assert "free)" in message and "shards written so far are kept" in message and "csm-adapt prepare" in message
    assert (data.out / "train-000000.tar").is_file() and not (data.out / ".lock").exists()
