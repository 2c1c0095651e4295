"""Helpers of the fault-injection suite: a small demo dataset, recipes on the micro model, and
`csm-adapt` run as a real subprocess (so that it can be killed with SIGKILL or limited in the
file size it may write)."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

from runs import write_train_recipe  # tests/runs.py

REPO = Path(__file__).parents[2]
DEMO = REPO / "recipes" / "demo_data"

# The suite's runs on the micro model (tests/runs.py writes the recipe): 6 steps of the amortized
# loss, a checkpoint every 2 steps and all of them kept, so that a kill can land between any two.
FAULT_RUN = {
    "strategy": "amortized", "val_fraction": 0.25, "steps": 6, "val_every": 3, "checkpoint_every": 2,
    "train_extra": "keep_last = 10",
}  # fmt: skip


def write_recipe(path: Path, dataset: Path, *, data: Path, run_dir: Path, **settings) -> Path:
    """`path`: a fault-suite recipe training on `dataset`, its shards in `data` (`settings` override FAULT_RUN's)."""
    return write_train_recipe(path, dataset, data=data, run_dir=run_dir, **{**FAULT_RUN, **settings})


def demo_subset(root: Path, clips: int) -> Path:
    """The first `clips` demo clips (metadata + a link to the audio) in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    lines = (DEMO / "metadata.csv").read_text("utf-8").splitlines()[:clips]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", "utf-8")
    (root / "wavs").symlink_to(DEMO / "wavs")
    return root


def _child_setup(fsize: int | None):
    def setup() -> None:
        os.setsid()  # its own process group: a kill reaches the DataLoader workers too
        if fsize is not None:
            # Without this, exceeding the limit kills the process (SIGXFSZ); ignored, the write fails with EFBIG.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return setup


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def start(args: list[str], cwd: Path, *, fsize: int | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "csm_adapt", *map(str, args)],
        cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_child_setup(fsize),
    )  # fmt: skip


def csm(args: list[str], cwd: Path, *, fsize: int | None = None, timeout: float = 300) -> tuple[int, str]:
    """Run csm-adapt to the end: (exit status, output)."""
    proc = start(args, cwd, fsize=fsize)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def kill_after(args: list[str], cwd: Path, seconds: float) -> bool:
    """Start csm-adapt and SIGKILL it (and its workers) after `seconds`; True when it was killed
    before it finished."""
    proc = start(args, cwd)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True
    finally:
        proc.stdout.close()


def kill_points(seed: int, count: int, longest: float) -> list[float]:
    """`count` seeded random delays in (0.5 s, longest), spread over the run."""
    rng = random.Random(seed)
    return sorted(rng.uniform(0.5, longest) for _ in range(count))


def files(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def metrics_records(run_dir: Path) -> list[tuple]:
    """metrics.jsonl without wall-clock times and rates: (step, name, value) per line, in order."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["name"], r["value"]) for r in map(json.loads, lines) if not r["name"].endswith("_per_s")]
