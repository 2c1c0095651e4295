"""What `csm-adapt run` prints at the end: every file and folder the run wrote, one line each.

Read from the disk, not assumed: the lines follow what the run's loggers and settings actually
produced. README.md shows this list for the demo (a test keeps the two the same).
"""

from __future__ import annotations

import os
from pathlib import Path

# What each known entry of a run directory holds; anything else is listed without a description.
DESCRIPTIONS = {
    "recipe.toml": "the resolved recipe: reproduce the run from it alone",
    "checkpoints/best": "best validation loss so far",
    "checkpoints/final": "the model at the end",
    "metrics.jsonl": "every metric, one JSON line each",
    "tensorboard": "TensorBoard events: tensorboard --logdir {run_dir}/tensorboard",
}
STEP_CHECKPOINT = "model + optimizer/scheduler/data/RNG state (resume)"
SAMPLES = "the prompts as generated at step {step}"
DATA = "shards, index.json, rejects.jsonl"


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is inside it (as a user typed it), else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_report(run_dir: Path, data_dir: Path | str) -> list[tuple[str, str]]:
    """(path, what it holds) for what a finished run left in `run_dir`, and its data in `data_dir`
    (a folder, or a URL: listed as written)."""
    url = data_dir.rstrip("/") + "/" if isinstance(data_dir, str) and "://" in data_dir else None
    # With a URL, a data_dir that matches no entry of run_dir.
    run_dir, data_dir = Path(run_dir), Path(run_dir) / ".." if url else Path(data_dir)
    entries: list[tuple[Path, str]] = []
    order = {"recipe.toml": 0, data_dir.name: 1, "checkpoints": 2, "samples": 3}
    for path in sorted(run_dir.iterdir(), key=lambda p: (order.get(p.name, 4), p.name)):
        name = path.name
        if name == "checkpoints":
            for checkpoint in sorted(path.iterdir()):
                if checkpoint.name.startswith("step-"):
                    entries.append((checkpoint, STEP_CHECKPOINT))
            for special in ("best", "final"):
                if (path / special).is_dir():
                    entries.append((path / special, DESCRIPTIONS[f"checkpoints/{special}"]))
        elif name == "samples":
            for step_dir in sorted(path.iterdir()):
                entries.append((step_dir, SAMPLES.format(step=int(step_dir.name.removeprefix("step-")))))
        elif path == data_dir:
            entries.append((path, DATA))
        elif not name.startswith("."):
            entries.append((path, DESCRIPTIONS.get(name, "").format(run_dir=shown(run_dir))))
    if url is None and data_dir.parent != run_dir:
        entries.insert(1, (data_dir, DATA))
    lines = [(shown(path) + (os.sep if path.is_dir() else ""), what) for path, what in entries]
    return lines[:1] + [(url, DATA)] + lines[1:] if url else lines


def format_report(entries: list[tuple[str, str]]) -> list[str]:
    width = max(len(path) for path, _ in entries) + 2
    return [f"{path:<{width}}{what}".rstrip() for path, what in entries]
