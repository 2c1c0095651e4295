"""Prepared data at a URL: prepare writes the shards to a real S3 API (moto's server on 127.0.0.1, started
and stopped here; fake credentials, the endpoint given as a storage option), atomically, under a lock,
and resumably; training, validation and evaluation stream them back, verified."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from rich.console import Console

from csm_adapt.cli import cli
from csm_adapt.config.recipe import load_recipe, recipe_to_toml
from csm_adapt.config.schema import DataConfig, ModelConfig, ReaderRef
from csm_adapt.config.structure import Url
from csm_adapt.data.encode import Frontend
from csm_adapt.data.loader import ShardError, TrainLoader, ValLoader
from csm_adapt.data.packing import Packer
from csm_adapt.data.prepare import prepare, prepared_is_current
from csm_adapt.data.storage import RemoteStore, StorageError, open_store
from csm_adapt.errors import CsmAdaptError
from csm_adapt.evaluation.prompts import val_prompts
from csm_adapt.model.audio_codec import AudioCodec
from csm_adapt.model.text_tokenizer import TextTokenizer
from csm_adapt_plugins.json_reader import JsonOptions, JsonReader
from runs import read_metrics, write_train_recipe  # tests/runs.py

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

MODEL = ModelConfig(text_tokenizer="offline", audio_codec="offline")
QUIET = Console(quiet=True)
PACKER = Packer(max_rows=40, rows_per_batch=80, pad_multiple=8)
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 API on 127.0.0.1 (moto, in a thread of this process) with a bucket; yields the storage
    options that reach it. Credentials are fake and come from the environment, as s3fs reads them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in FAKE_CREDENTIALS.items():
            mp.setenv(key, value)
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))  # the local lock files
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem(**options).mkdir("bucket")
        yield options
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture
def clips(tmp_path) -> Path:
    """5 clips of uneven lengths and one missing, in a JSONL."""
    root = tmp_path / "set"
    root.mkdir()
    rows = []
    for i, seconds in enumerate((0.3, 0.2, 0.45, 0.25, 0.35)):
        t = np.arange(int(seconds * 16_000)) / 16_000
        wav = 0.3 * np.sin(2 * np.pi * (180 + 30 * i) * t) + 0.05 * np.random.default_rng(i).standard_normal(t.shape)
        sf.write(root / f"c{i}.wav", wav.astype(np.float32), 16_000)
        rows.append({"text": f"Numéro {i}.", "path": f"c{i}.wav"})
    rows.insert(2, {"text": "Manquant.", "path": "missing.wav"})
    (root / "meta.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return root


@pytest.fixture(scope="module")
def frontend() -> Frontend:
    return Frontend(TextTokenizer.load("offline"), AudioCodec.load("offline"))


def data(clips: Path, out, options=None) -> DataConfig:
    reader = ReaderRef("json", JsonOptions(path=clips / "meta.jsonl"), JsonReader)
    return DataConfig(reader=reader, out=out, storage_options=options, max_rows=40, val_fraction=0.2, shard_samples=2)


def objects(s3: dict, prefix: str) -> dict[str, bytes]:
    """Every object under s3://bucket/<prefix>/, by name relative to it."""
    fs = s3fs.S3FileSystem(**s3)
    fs.invalidate_cache()
    return {p.removeprefix(f"bucket/{prefix}/"): fs.cat_file(p) for p in fs.find(f"bucket/{prefix}")}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def unfinished_uploads(s3: dict) -> list[str]:
    fs = s3fs.S3FileSystem(**s3)
    return [upload["Key"] for upload in fs.list_multipart_uploads("bucket")]


def test_a_url_is_kept_as_written_and_storage_options_are_a_table(tmp_path):
    recipe = tmp_path / "r.toml"
    text = Path("recipes/demo.toml").read_text("utf-8").replace('out = "runs/demo/data"', 'out = "s3://bucket/demo"')
    assert 's3://bucket/demo"' in text
    recipe.write_text(
        text.replace("[data.reader]", '[data.storage_options]\nendpoint_url = "http://x:9000"\n\n[data.reader]')
    )
    (tmp_path / "demo_data").symlink_to(Path("recipes/demo_data").absolute())
    loaded = load_recipe(recipe)
    # Never made relative to the recipe's folder nor to the current directory.
    assert loaded.data.out == "s3://bucket/demo" and isinstance(loaded.data.out, Url)
    assert loaded.data.storage_options == {"endpoint_url": "http://x:9000"}
    override = load_recipe(recipe, ["data.out=gs://other/prefix/"]).data.out
    assert override == "gs://other/prefix/" and isinstance(override, Url)
    assert load_recipe(recipe, ["data.out=runs/x"]).data.out == Path("runs/x").absolute()
    # The saved recipe runs as is: the URL and the options survive the round trip.
    saved = tmp_path / "saved.toml"
    saved.write_text(recipe_to_toml(loaded), "utf-8")
    again = load_recipe(saved)
    assert again.data.out == loaded.data.out and again.data.storage_options == loaded.data.storage_options


def test_prepare_to_s3_killed_mid_upload_resumes_to_the_same_files_and_training_streams_them(
    s3, clips, tmp_path, frontend, monkeypatch
):
    local = data(clips, tmp_path / "local")
    reference = prepare(local, MODEL, console=QUIET, frontend=frontend)

    remote = data(clips, Url("s3://bucket/prepared"), s3)
    real_upload = RemoteStore._upload

    def upload_then_die(self, staged, name):
        if name != "train-000001.tar":
            return real_upload(self, staged, name)
        # Killed while the second shard's bytes are on their way: a multipart upload begun, never completed.
        fs = self.fs
        key = "prepared/train-000001.tar"
        upload = fs.call_s3("create_multipart_upload", Bucket="bucket", Key=key)
        body = staged.read_bytes()[:1000]
        fs.call_s3("upload_part", Bucket="bucket", Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=body)
        raise KeyboardInterrupt

    monkeypatch.setattr(RemoteStore, "_upload", upload_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(remote, MODEL, console=QUIET, frontend=frontend)
    assert not prepared_is_current(remote, MODEL)
    # No partial object under the shard's name; the first shard and its record are kept; the lock is gone.
    left = objects(s3, "prepared")
    assert sorted(left) == [".progress/recipe.json", ".progress/train-000000.tar.json", "train-000000.tar"]
    assert unfinished_uploads(s3) == ["prepared/train-000001.tar"]
    # Someone else's upload under the same prefix: not prepare's to abort.
    fs = s3fs.S3FileSystem(**s3)
    theirs = fs.call_s3("create_multipart_upload", Bucket="bucket", Key="prepared/notes.bin")

    monkeypatch.setattr(RemoteStore, "_upload", real_upload)
    uploaded = []
    monkeypatch.setattr(
        RemoteStore, "_upload", lambda self, staged, name: uploaded.append(name) or real_upload(self, staged, name)
    )
    index = prepare(remote, MODEL, console=QUIET, frontend=frontend)
    assert prepared_is_current(remote, MODEL)
    assert "train-000000.tar" not in uploaded and "train-000001.tar" in uploaded  # resumed shard by shard

    # Byte for byte the files of a local prepare (index.json included), and nothing else: no
    # progress records, no lock, no unfinished upload.
    assert objects(s3, "prepared") == files(local.out)
    assert unfinished_uploads(s3) == ["prepared/notes.bin"]
    fs.call_s3("abort_multipart_upload", Bucket="bucket", Key="prepared/notes.bin", UploadId=theirs["UploadId"])
    assert index["splits"] == reference["splits"]

    # Training, validation and evaluation read it back, the same batches as from the local folder.
    store = open_store(remote.out, s3)
    from_s3 = [b.sample_ids for b in ValLoader(store, PACKER)]
    assert from_s3 == [b.sample_ids for b in ValLoader(local.out, PACKER)] and from_s3
    # One DataLoader worker: a forked process, which makes its own S3 client.
    train, train_local = (iter(TrainLoader(d, PACKER, num_workers=1, rank=0, world_size=1)) for d in (store, local.out))
    for _ in range(3):
        assert next(train).sample_ids == next(train_local).sample_ids
    assert [p.text for p in val_prompts(store, 5)] == [p.text for p in val_prompts(local.out, 5)]

    # Verified while streaming: a shard damaged in place (same size) is named by its URL.
    damaged = bytearray(fs.cat_file("bucket/prepared/val-000000.tar"))
    damaged[700] ^= 0xFF
    fs.pipe_file("bucket/prepared/val-000000.tar", bytes(damaged))
    with pytest.raises(ShardError, match=r"s3://bucket/prepared/val-000000\.tar: damaged shard \(its sha256 differs"):
        list(ValLoader(open_store(remote.out, s3), PACKER))


HOLD = """
import sys, time
from csm_adapt.data.storage import RemoteStore
with RemoteStore(sys.argv[1], {"endpoint_url": sys.argv[2]}).lock("holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_one_prepare_per_url_on_one_machine_and_across_machines(s3, clips, frontend):
    url = "s3://bucket/locked"
    target = data(clips, Url(url), s3)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, url, s3["endpoint_url"]], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(CsmAdaptError, match=rf"^{url} is in use by another csm-adapt prepare \(PID {holder.pid}\)"):
            prepare(target, MODEL, console=QUIET, frontend=frontend)
        assert list(objects(s3, "locked")) == [".lock"]  # refused: nothing written
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: its lock object stays behind
        holder.wait()
        holder.stdout.close()
    assert json.loads(objects(s3, "locked")[".lock"])["pid"] == holder.pid
    # The lock object of a dead process of this machine is taken over.
    prepare(target, MODEL, console=QUIET, frontend=frontend)
    assert ".lock" not in objects(s3, "locked") and "index.json" in objects(s3, "locked")

    # Another machine's prepare holds a URL: refused, naming it, and how to clear a stale one.
    other = data(clips, Url("s3://bucket/elsewhere"), s3)
    fs = s3fs.S3FileSystem(**s3)
    fs.pipe_file("bucket/elsewhere/.lock", json.dumps({"host": "gpu-node-7", "pid": 4242, "since": "then"}).encode())
    with pytest.raises(CsmAdaptError) as refused:
        prepare(other, MODEL, console=QUIET, frontend=frontend)
    assert str(refused.value).startswith(
        "s3://bucket/elsewhere is in use by another csm-adapt prepare (PID 4242 on gpu-node-7"
    )
    assert "delete s3://bucket/elsewhere/.lock" in str(refused.value)
    assert list(objects(s3, "elsewhere")) == [".lock"]
    # Another user of this machine (their own local lock): refused while their process lives.
    shared = data(clips, Url("s3://bucket/shared-host"), s3)
    theirs = {"host": socket.gethostname(), "user": os.getuid() + 1, "pid": os.getpid(), "since": "then"}
    fs.pipe_file("bucket/shared-host/.lock", json.dumps(theirs).encode())
    with pytest.raises(CsmAdaptError, match=rf"in use by another csm-adapt prepare \(PID {os.getpid()} on "):
        prepare(shared, MODEL, console=QUIET, frontend=frontend)
    fs.pipe_file("bucket/shared-host/.lock", json.dumps({**theirs, "pid": holder.pid}).encode())  # died
    prepare(shared, MODEL, console=QUIET, frontend=frontend)
    assert ".lock" not in objects(s3, "shared-host") and "index.json" in objects(s3, "shared-host")
    # The exclusive create is atomic on S3 (If-None-Match): a second create of the object fails.
    with pytest.raises(FileExistsError):
        fs.pipe_file("bucket/elsewhere/.lock", b"{}", mode="create")


def test_a_filesystem_without_atomic_puts_gets_temporary_names_cleaned_on_resume(
    clips, tmp_path, frontend, monkeypatch
):
    """memory:// stands for the fsspec filesystems that are not object stores: write, then move."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    local = data(clips, tmp_path / "local")
    prepare(local, MODEL, console=QUIET, frontend=frontend)
    remote = data(clips, Url("memory://prepared"))
    store = open_store(remote.out)
    real_mv = type(store.fs).mv

    def die_before_the_move(self, source, target, **kwargs):
        if target.endswith("train-000001.tar"):
            raise KeyboardInterrupt  # the bytes are under the temporary name, not yet moved
        return real_mv(self, source, target, **kwargs)

    monkeypatch.setattr(type(store.fs), "mv", die_before_the_move)
    with pytest.raises(KeyboardInterrupt):
        prepare(remote, MODEL, console=QUIET, frontend=frontend)
    left = store.fs.find("/prepared")
    assert not any(p.endswith("/train-000001.tar") for p in left)
    # What KeyboardInterrupt cleaned up, kill -9 would have left: put it back.
    store.fs.pipe_file(f"/prepared/.train-000001.tar.{os.getpid() + 1}.tmp", b"partial")
    monkeypatch.setattr(type(store.fs), "mv", real_mv)
    prepare(remote, MODEL, console=QUIET, frontend=frontend)
    store.fs.invalidate_cache()
    got = {p.removeprefix("/prepared/"): store.fs.cat_file(p) for p in store.fs.find("/prepared")}
    assert got == files(local.out)
    store.fs.rm("/prepared", recursive=True)


def test_missing_packages_and_unreachable_urls_are_one_line_naming_the_url(monkeypatch):
    import fsspec.registry  # noqa: F401 - the module, whose name the package's `registry` mapping hides

    loaded = sys.modules["fsspec.registry"]._registry  # protocol -> filesystem class, once imported
    monkeypatch.delitem(loaded, "gs", raising=False)
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # not installed
    with pytest.raises(
        StorageError, match=r"^gs://bucket/x: gs:// needs the gcsfs package: pip install 'csm-adapt\[remote\]'$"
    ):
        open_store("gs://bucket/x")
    monkeypatch.delitem(loaded, "s3", raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(StorageError, match=r"needs the s3fs package: pip install 'csm-adapt\[remote\]'"):
        prepared_is_current(data(Path("/nowhere"), Url("s3://bucket/x")), MODEL)
    monkeypatch.undo()

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    options = {"endpoint_url": f"http://127.0.0.1:{closed}", "config_kwargs": {"retries": {"max_attempts": 1}}}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(StorageError) as caught:
        ValLoader(open_store("s3://bucket/data", options), PACKER)
    assert str(caught.value).startswith("s3://bucket/data/index.json: ")
    assert "check the credentials, the network and data.storage_options" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_two_ranks_under_torchrun_prepare_to_s3_as_one_process_does(s3, clips, tmp_path, frontend):
    local = data(clips, tmp_path / "local")
    prepare(local, MODEL, console=QUIET, frontend=frontend)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[model]\nconfig = "micro"\ntext_tokenizer = "offline"\naudio_codec = "offline"\n'
        '[loss]\nstrategy = "amortized"\n'
        f'[output]\nrun_dir = "{tmp_path / "run"}"\n'
        '[data]\nout = "s3://bucket/ranks"\nmax_rows = 40\nval_fraction = 0.2\nshard_samples = 2\n'
        f'[data.storage_options]\nendpoint_url = "{s3["endpoint_url"]}"\n'
        f'[data.reader]\nname = "json"\npath = "{clips / "meta.jsonl"}"\n'
    )
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "csm_adapt", "prepare", str(recipe), "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert objects(s3, "ranks") == files(local.out)
    assert unfinished_uploads(s3) == []


def test_run_prepares_to_s3_then_trains_validates_and_evaluates_streaming_from_it(s3, tmp_path, demo_clips):
    evaluation = '[eval]\nevery = 4\nmax_prompts = 2\nmax_audio_ms = 240\n[[eval.evaluators]]\nname = "stopping"\n'
    recipe = write_train_recipe(tmp_path, demo_clips(6), run_dir=tmp_path / "run", extra=evaluation)
    endpoint = s3["endpoint_url"]
    # As the README shows it: the URL and the endpoint as overrides, the credentials in the environment.
    overrides = ["data.out=s3://bucket/run-data", f'data.storage_options={{endpoint_url="{endpoint}"}}']
    result = CliRunner().invoke(cli, ["run", str(recipe), *overrides, "train.steps=4"])
    assert result.exit_code == 0, result.output
    assert "s3://bucket/run-data/" in result.output  # the closing list names the data where they are
    assert {"index.json", "rejects.jsonl", "train-000000.tar", "val-000000.tar"} == set(objects(s3, "run-data"))
    run_dir = tmp_path / "run"
    assert sorted(read_metrics(run_dir, "val/loss")) == [4] and sorted(read_metrics(run_dir, "eval/eos")) == [4]
    saved = load_recipe(run_dir / "recipe.toml")
    assert saved.data.out == "s3://bucket/run-data" and saved.data.storage_options == {"endpoint_url": endpoint}
