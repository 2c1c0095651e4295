"""Starting the sweep's worker processes, one device share each, and waiting for them.

Workers are separate processes (not threads): each trial owns its GPU or CPU cores, and a crash or
OOM takes one worker down, not the sweep. Each writes its output to `<sweep_dir>/logs/worker-N.log`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from csm_adapt.errors import ConfigError
from csm_adapt.sweep.worker import Job


@attrs.frozen
class Slot:
    """Where one worker runs: the environment it starts with and the torch settings it applies."""

    env: dict[str, str]
    threads: int = 0
    memory_fraction: float = 1.0


def plan_slots(workers: int, workers_per_gpu: int, gpus: list[str], cpu_count: int) -> list[Slot]:
    """GPUs: `workers_per_gpu` workers on each, sharing its memory. CPU: the cores split evenly."""
    if workers < 1 or workers_per_gpu < 1:
        raise ConfigError("--workers and --workers-per-gpu must be >= 1")
    if not gpus:
        threads = max(1, cpu_count // workers)
        return [Slot({"OMP_NUM_THREADS": str(threads)}, threads=threads) for _ in range(workers)]
    if workers > len(gpus) * workers_per_gpu:
        raise ConfigError(
            f"--workers {workers}: only {len(gpus)} GPU(s) × --workers-per-gpu {workers_per_gpu} available"
        )
    return [
        Slot({"CUDA_VISIBLE_DEVICES": gpus[i // workers_per_gpu]}, memory_fraction=1 / workers_per_gpu)
        for i in range(workers)
    ]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def launch(job: Job, slots: list[Slot], log_dir: Path) -> list[subprocess.Popen]:
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, slot in enumerate(slots):
        worker_job = attrs.evolve(job, seed=job.seed + i, threads=slot.threads, memory_fraction=slot.memory_fraction)
        with open(log_dir / f"worker-{i}.log", "ab") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "csm_adapt.sweep.worker", worker_job.to_json()],
                env={**os.environ, **slot.env}, stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
    return procs


def wait(procs: list[subprocess.Popen], on_tick: Callable[[], None], every_s: float = 2.0) -> list[int]:
    """Wait for every worker, calling `on_tick` meanwhile; Ctrl-C stops them all (their trials are
    re-tried when the sweep is run again). Returns the exit codes."""
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(every_s)
            on_tick()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    on_tick()
    return [p.returncode for p in procs]
