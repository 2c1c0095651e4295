"""The `hf_datasets` reader on parquet/arrow files the tests write: audio bytes and paths, bad clips,
speakers numbered and recorded in index.json, streaming, and the errors a user can cause."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console

from csm_adapt.config.schema import DataConfig, ModelConfig, ReaderRef
from csm_adapt.data.encode import Frontend
from csm_adapt.data.prepare import prepare
from csm_adapt.errors import CsmAdaptError
from csm_adapt.model.audio_codec import AudioCodec
from csm_adapt.model.text_tokenizer import TextTokenizer

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from csm_adapt_plugins.hf_datasets_reader import HFDatasetsOptions, HFDatasetsReader  # noqa: E402

MODEL = ModelConfig(text_tokenizer="offline", audio_codec="offline")
QUIET = Console(quiet=True)


def encoded(seconds: float, rate: int = 16_000, fmt: str = "WAV", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)
    buffer = io.BytesIO()
    sf.write(buffer, wav.astype(np.float32), rate, format=fmt)
    return buffer.getvalue()


ROWS = [
    # (audio {bytes, path}, text, speaker, start, end)
    ({"bytes": encoded(0.3), "path": "a.wav"}, "Bonjour.", "alice", None, None),
    ({"bytes": encoded(0.25, 24_000, "FLAC", 1), "path": "b.flac"}, "Salut !", "bob", None, None),
    ({"bytes": b"RIFF\x00\x00\x00\x00WAVE garbage" * 8, "path": "c.wav"}, "Cassé.", "alice", None, None),
    ({"bytes": None, "path": "missing.wav"}, "Manquant.", "carol", None, None),
    ({"bytes": None, "path": "on_disk.wav"}, "Sur le disque.", "bob", None, None),
    ({"bytes": encoded(1.0, seed=2), "path": "long.wav"}, "Un extrait.", "dave", 0.2, 0.5),
    ({"bytes": encoded(0.2, seed=3), "path": "d.wav"}, "Trop loin.", "alice", 3.0, None),
]


@pytest.fixture
def parquet(tmp_path) -> Path:
    """data/train-0000{0,1}.parquet (an uneven split over two files) and an audio file beside them."""
    folder = tmp_path / "set"
    (folder / "data").mkdir(parents=True)
    sf.write(folder / "on_disk.wav", np.sin(np.arange(8000) / 9).astype(np.float32) * 0.3, 16_000)
    columns = ("audio", "text", "speaker", "start", "end")
    table = pa.table({name: [row[i] for row in ROWS] for i, name in enumerate(columns)})
    pq.write_table(table.slice(0, 2), folder / "data" / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(2), folder / "data" / "train-00001-of-00002.parquet")
    return folder


def options(path: Path, tmp_path: Path, **settings) -> HFDatasetsOptions:
    defaults = {"speaker": "speaker", "start": "start", "end": "end", "cache_dir": tmp_path / "cache"}
    return HFDatasetsOptions(path=path, **{**defaults, **settings})


def test_reads_rows_in_order_with_speakers_numbered_by_first_appearance(parquet, tmp_path):
    reader = HFDatasetsReader(options(parquet, tmp_path))
    samples = list(reader.read())
    assert [s.turns[0].text for s in samples] == [row[1] for row in ROWS]
    assert [s.turns[0].speaker for s in samples] == [0, 1, 0, 2, 1, 3, 0]
    assert reader.index_info() == {"speakers": {"alice": 0, "bob": 1, "carol": 2, "dave": 3}}
    assert [s.id for s in samples] == [f"train-{i}" for i in range(7)]
    assert samples[5].source == f"{parquet}/train:row 5"
    assert (samples[5].turns[0].start, samples[5].turns[0].end) == (0.2, 0.5)
    # Audio is fetched lazily, never decoded by datasets: bytes as stored, or a path beside the data.
    assert samples[1].turns[0].audio.fetch() == ROWS[1][0]["bytes"]
    assert samples[4].turns[0].audio.fetch() == parquet / "on_disk.wav"


def test_speaker_map_fixes_the_numbering_and_new_speakers_follow_it(parquet, tmp_path):
    mapping = tmp_path / "speakers.json"
    mapping.write_text('{"bob": 0, "alice": 5}')
    reader = HFDatasetsReader(options(parquet, tmp_path, speaker_map=mapping))
    assert [s.turns[0].speaker for s in reader.read()] == [5, 0, 5, 6, 0, 7, 5]
    assert reader.index_info()["speakers"] == {"bob": 0, "alice": 5, "carol": 6, "dave": 7}


def test_streaming_yields_the_same_samples_and_audio(parquet, tmp_path):
    plain = list(HFDatasetsReader(options(parquet, tmp_path)).read())
    streamed = list(HFDatasetsReader(options(parquet, tmp_path, streaming=True)).read())
    assert [(s.id, s.turns[0].text, s.turns[0].speaker) for s in streamed] == [
        (s.id, s.turns[0].text, s.turns[0].speaker) for s in plain
    ]
    # Out of order too: the stream restarts when an earlier row is asked for.
    for i in (5, 1, 6, 0):
        assert streamed[i].turns[0].audio.fetch() == plain[i].turns[0].audio.fetch()


def test_prepare_encodes_good_rows_rejects_bad_ones_and_records_the_speakers(parquet, tmp_path):
    reader = ReaderRef("hf_datasets", options(parquet, tmp_path), HFDatasetsReader)
    data = DataConfig(reader=reader, out=tmp_path / "out", max_rows=40, val_fraction=0.0, shard_samples=3)
    frontend = Frontend(TextTokenizer.load("offline"), AudioCodec.load("offline"))
    index = prepare(data, MODEL, console=QUIET, frontend=frontend)
    rejects = [json.loads(line) for line in (data.out / "rejects.jsonl").read_text("utf-8").splitlines()]
    assert {r["source"]: r["reason"] for r in rejects} == {
        f"{parquet}/train:row 2": "corrupt",
        f"{parquet}/train:row 3": "missing",
        f"{parquet}/train:row 6": "bad span",
    }
    assert index["summary"]["kept"] == {"train": 4, "val": 0}
    assert index["reader_info"] == {"reader": {"speakers": {"alice": 0, "bob": 1, "carol": 2, "dave": 3}}}
    shards = index["splits"]["train"]["shards"]
    members = [m for shard in shards for m in tarfile.open(data.out / shard["name"]).getnames()]
    assert [m for m in members if m.endswith(".json")] == [
        "train-0.json",
        "train-1.json",
        "train-4.json",
        "train-5.json",
    ]
    # Decoded by our audio I/O from bytes (wav, flac), a file, and a 0.2..0.5 s span of bytes.
    assert sum(shard["seconds"] for shard in shards) == pytest.approx(0.3 + 0.25 + 0.5 + 0.3, abs=0.01)


def test_a_single_file_a_save_to_disk_folder_and_a_string_path_column(tmp_path):
    (tmp_path / "clips").mkdir()
    sf.write(tmp_path / "clips" / "x.wav", np.full(4000, 0.2, np.float32), 16_000)
    table = pa.table({"file": ["clips/x.wav", "clips/none.wav"], "sentence": ["Un.", "Deux."], "key": ["k1", "k2"]})
    pq.write_table(table, tmp_path / "one.parquet")
    reader = HFDatasetsReader(options(tmp_path / "one.parquet", tmp_path, audio="file", text="sentence", id="key",
                                      speaker=None, start=None, end=None))  # fmt: skip
    samples = list(reader.read())
    assert [s.id for s in samples] == ["k1", "k2"]
    assert [s.turns[0].audio.fetch() for s in samples] == [tmp_path / "clips" / "x.wav", tmp_path / "clips/none.wav"]
    assert samples[0].source == f"{tmp_path / 'one.parquet'}:row 0"
    assert reader.index_info() == {}

    saved = tmp_path / "saved"
    ds = datasets.Dataset.from_dict({"audio": [str(tmp_path / "clips" / "x.wav")], "text": ["Trois."]})
    datasets.DatasetDict({"test": ds.cast_column("audio", datasets.Audio())}).save_to_disk(str(saved))
    samples = list(HFDatasetsReader(options(saved, tmp_path, split="test", speaker=None, start=None, end=None)).read())
    assert samples[0].turns[0].text == "Trois."
    # An Audio feature is cast to decode=False: the reader gets its raw {bytes, path}.
    fetched = samples[0].turns[0].audio.fetch()
    assert fetched == (tmp_path / "clips" / "x.wav").read_bytes() or fetched == tmp_path / "clips" / "x.wav"


def test_errors_name_the_key_the_column_and_the_extra(parquet, tmp_path, monkeypatch):
    with pytest.raises(CsmAdaptError, match=r"no column 'transcript' \(data.reader.text\); the columns are: audio"):
        list(HFDatasetsReader(options(parquet, tmp_path, text="transcript")).read())
    with pytest.raises(CsmAdaptError, match="nowhere: no such file or folder"):
        HFDatasetsReader(options(tmp_path / "nowhere", tmp_path))
    with pytest.raises(ValueError, match="exactly one of `dataset`"):
        HFDatasetsOptions(dataset="org/set", path=parquet)
    with pytest.raises(CsmAdaptError, match='cannot load the dataset: .*Unknown split "dev"'):
        list(HFDatasetsReader(options(parquet, tmp_path, split="dev")).read())
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(CsmAdaptError, match=r"pip install 'csm-adapt\[hf\]'"):
        HFDatasetsReader(options(parquet, tmp_path))
