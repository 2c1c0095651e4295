"""csm-adapt as a user installs it: the wheel, in a fresh virtual environment outside the checkout.

The environment gets its dependencies (torch and the rest, gigabytes) from the test's own
environment through a path file, minus any csm-adapt installed there, so what runs is the wheel
alone: its built-in plugins, its bundled tokenizer, and the demo clips the offline codec is fitted
to, which must ship inside the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*cmd, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    # No PYTHONPATH and a working directory outside the checkout: nothing of the sources leaks in.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, REPO, cwd=root)
    [wheel] = dist.glob("csm_adapt-*.whl")

    env_dir = root / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", env_dir, cwd=root)
    site = Path(
        _run(
            env_dir / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root
        ).stdout.strip()
    )
    # The dependencies: this environment's packages, seen through links that leave out csm-adapt.
    deps = root / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("csm_adapt", "__editable__", "csm-adapt")):
            (deps / entry.name).symlink_to(entry)
    (site / "deps.pth").write_text(f"{deps}\n")
    _run(sys.executable, "-m", "pip", "--python", env_dir / "bin" / "python", "install", "-q", "--no-deps", wheel,
         cwd=root)  # fmt: skip
    return env_dir


def test_the_wheel_holds_the_package_and_its_plugins(venv, tmp_path):
    where = _run(venv / "bin" / "python", "-c", "import csm_adapt; print(csm_adapt.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv)
    listed = json.loads(_run(venv / "bin" / "csm-adapt", "plugins", "--json", cwd=tmp_path).stdout)
    builtins = {p["name"] for p in listed if p["source"] == "csm-adapt"}
    assert {"jsonl_logger", "console_logger", "loss_strategies", "json_reader", "ljspeech_reader"} <= builtins


def test_an_offline_run_works_from_the_wheel(venv, tmp_path):
    # A few of the demo clips that ship in the package, as a user's own LJSpeech-style folder.
    shipped = Path(
        _run(venv / "bin" / "python", "-c", "import csm_adapt, pathlib; print(pathlib.Path(csm_adapt.__file__).parent)",
             cwd=tmp_path).stdout.strip()
    ) / "recipes" / "demo_data"  # fmt: skip
    assert shipped.is_relative_to(venv)
    data = tmp_path / "clips"
    (data / "wavs").mkdir(parents=True)
    lines = (shipped / "metadata.csv").read_text("utf-8").splitlines()[:6]
    for line in lines:
        clip = line.split("|")[0]
        (data / "wavs" / f"{clip}.wav").write_bytes((shipped / "wavs" / f"{clip}.wav").read_bytes())
    (data / "metadata.csv").write_text("\n".join(lines) + "\n", "utf-8")
    (tmp_path / "recipe.toml").write_text(
        f"""
[model]
config = "micro"
text_tokenizer = "offline"
audio_codec = "offline"
[data]
out = "{tmp_path / "prepared"}"
max_rows = 512
val_fraction = 0.2
[data.reader]
name = "ljspeech"
root = "{data}"
[loss]
strategy = "amortized"
[train]
steps = 2
rows_per_step = 512
rows_per_micro_batch = 512
log_every = 1
val_every = 2
checkpoint_every = 2
[[loggers]]
name = "jsonl"
[output]
run_dir = "{tmp_path / "run"}"
"""
    )
    _run(venv / "bin" / "csm-adapt", "run", "recipe.toml", cwd=tmp_path, timeout=600)
    assert (tmp_path / "run" / "checkpoints" / "final" / "model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2
