"""`torchrun -m csm_adapt prepare` with 2 gloo processes: shards shared, result identical, resumable."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console

from csm_adapt.config.schema import DataConfig, ModelConfig, ReaderRef
from csm_adapt.data import prepare as prepare_module
from csm_adapt.data.encode import Frontend
from csm_adapt.data.prepare import prepare
from csm_adapt.model.audio_codec import AudioCodec
from csm_adapt.model.text_tokenizer import TextTokenizer
from csm_adapt_plugins.json_reader import JsonOptions, JsonReader

MODEL = ModelConfig(text_tokenizer="offline", audio_codec="offline")
QUIET = Console(quiet=True)
TIMING = ("processing_s", "clips_per_s", "audio_s_per_s")

# A recipe-local reader: the json reader, with audio that notes which rank decoded it.
PROBE = """
import os
import attrs
from csm_adapt import hookimpl
from csm_adapt_plugins.json_reader import JsonOptions, JsonReader


@attrs.frozen
class Probe:
    path: object
    log: str

    def fetch(self):
        with open(self.log, "a") as f:
            f.write(f"{os.environ.get('RANK', '0')} {self.path.name}\\n")
        return self.path

    def __str__(self):
        return str(self.path)


class ProbeReader(JsonReader):
    def read(self):
        log = os.environ["PROBE_LOG"]
        for sample in super().read():
            turns = tuple(attrs.evolve(t, audio=Probe(t.audio, log)) for t in sample.turns)
            yield attrs.evolve(sample, turns=turns)


@hookimpl
def register_dataset_readers(register):
    register("probe", ProbeReader, options=JsonOptions)
"""


@pytest.fixture
def dataset(tmp_path) -> Path:
    """9 clips of uneven lengths (one missing, one silent) and their JSONL."""
    root = tmp_path / "set"
    root.mkdir()
    rows = []
    for i, seconds in enumerate((0.3, 0.2, 0.5, 0.25, 0.4, 0.15, 0.35)):
        t = np.arange(int(seconds * 16_000)) / 16_000
        wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * np.random.default_rng(i).standard_normal(t.shape)
        sf.write(root / f"c{i}.wav", wav.astype(np.float32), 16_000)
        rows.append({"text": f"Phrase numéro {i}.", "path": f"c{i}.wav", "speaker": i % 3})
    sf.write(root / "silent.wav", np.zeros(3000, np.float32), 16_000)
    rows.insert(3, {"text": "Rien.", "path": "silent.wav"})
    rows.insert(5, {"text": "Manquant.", "path": "missing.wav"})
    (root / "meta.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    (tmp_path / "probe_reader.py").write_text(PROBE)
    return root


def recipe(tmp_path: Path, dataset: Path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(
        'plugins = ["probe_reader.py"]\n'
        '[model]\nconfig = "micro"\ntext_tokenizer = "offline"\naudio_codec = "offline"\n'
        '[loss]\nstrategy = "amortized"\n'
        f'[output]\nrun_dir = "{tmp_path / "run"}"\n'
        f'[data]\nout = "{tmp_path / "unused"}"\nmax_rows = 40\nval_fraction = 0.25\nshard_samples = 2\n'
        f'[data.reader]\nname = "probe"\npath = "{dataset / "meta.jsonl"}"\n'
    )
    return path


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))} | {
        "rejects": (out / "rejects.jsonl").read_bytes()
    }


def test_two_ranks_share_the_shards_resume_and_match_one_process(dataset, tmp_path, monkeypatch):
    frontend = Frontend(TextTokenizer.load("offline"), AudioCodec.load("offline"))
    json_reader = ReaderRef("json", JsonOptions(path=dataset / "meta.jsonl"), JsonReader)
    settings = {"max_rows": 40, "val_fraction": 0.25, "shard_samples": 2}
    one = DataConfig(reader=json_reader, out=tmp_path / "one", **settings)
    reference = prepare(one, MODEL, console=QUIET, frontend=frontend)

    # A single-process run of the same recipe killed after its first shard...
    spec = importlib.util.spec_from_file_location("probe_reader", tmp_path / "probe_reader.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    log = tmp_path / "decoded.log"
    monkeypatch.setenv("PROBE_LOG", str(log))
    two = DataConfig(reader=ReaderRef("probe", JsonOptions(path=dataset / "meta.jsonl"), probe.ProbeReader),
                     out=tmp_path / "two", **settings)  # fmt: skip
    real_write = prepare_module.write_shard

    def write_once_then_die(path, samples):
        if list(two.out.glob("*.tar")):
            raise KeyboardInterrupt
        return real_write(path, samples)

    monkeypatch.setattr(prepare_module, "write_shard", write_once_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(two, MODEL, console=QUIET, frontend=frontend)
    first = two.out / "train-000000.tar"
    kept_stat = first.stat()
    log.unlink()

    # ... finished by two ranks.
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "csm_adapt", "prepare", str(recipe(tmp_path, dataset)), f"data.out={two.out}", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROBE_LOG": str(log)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert outputs(two.out) == outputs(one.out)
    assert len(outputs(one.out)) == 6  # 6 train + 3 val samples, 2 a shard, + rejects
    assert first.stat().st_mtime_ns == kept_stat.st_mtime_ns and first.stat().st_ino == kept_stat.st_ino
    index = json.loads((two.out / "index.json").read_text())
    assert index["splits"] == reference["splits"]
    assert {k: v for k, v in index["summary"].items() if k not in TIMING} == {
        k: v for k, v in reference["summary"].items() if k not in TIMING
    }
    # Nothing left over (.progress, temporary files): the same files as one process's.
    assert sorted(p.name for p in two.out.iterdir()) == sorted(p.name for p in one.out.iterdir())

    # Each clip of the unfinished shards was decoded once, and both ranks did some of them.
    decoded = [line.split() for line in log.read_text().splitlines()]
    assert {rank for rank, _ in decoded} == {"0", "1"}
    names = [name for _, name in decoded]
    assert len(names) == len(set(names)) == 9 - 2  # train-000000 holds 2 samples, done before the kill
    assert result.stdout.count("prepared ") == 1  # one summary: rank 0's
