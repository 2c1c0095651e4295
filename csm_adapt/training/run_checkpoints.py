"""Training checkpoints in the run directory.

    checkpoints/step-000500/   model (original layout) + csm_adapt.json + trainer.pt (resume state)
    checkpoints/best/          model files of the best validation loss so far (+ best.json)
    checkpoints/final/         model files at the end of the run

With an [adapter], each of them holds the adapter's files (adapter.safetensors + adapter.json, see
training/adapters.py) instead of the model's: the frozen base is the recipe's and is never copied.

Each directory is written under a temporary name and renamed into place, so a kill during a save
leaves every earlier checkpoint as it was. The model files are what `csm-adapt generate` and the
reference `Model.from_pretrained` load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from csm_adapt.files import no_space_errno
from csm_adapt.model.checkpoint import save_model
from csm_adapt.model.csm import CSM
from csm_adapt.model.synthesizer import write_frontend
from csm_adapt.training.adapters import AdapterSpec

TRAINER_STATE = "trainer.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _write_dir(target: Path, write) -> Path:
    """Write a directory under a temporary name, then swap it in (replacing any old one)."""
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (a full disk) must not keep its space
        code = no_space_errno(e)
        if code is not None:  # name the checkpoint, which safetensors' and torch's errors do not
            raise OSError(code, os.strerror(code), str(target)) from e
        raise
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _write_model(directory: Path, model: CSM, frontend: tuple[str, str], adapter: AdapterSpec | None) -> None:
    if adapter is None:
        save_model(model, directory)
    else:
        adapter.write(directory, model)
    write_frontend(directory, *frontend)


def save_model_dir(
    target: Path, model: CSM, frontend: tuple[str, str], best: dict | None = None, adapter: AdapterSpec | None = None
) -> Path:
    """Model (or adapter) files only (best/final); `best` records which step and loss made it the best."""

    def write(tmp: Path) -> None:
        _write_model(tmp, model, frontend, adapter)
        if best is not None:
            (tmp / "best.json").write_text(json.dumps(best, indent=2) + "\n")

    return _write_dir(target, write)


def save_step(
    run_dir: Path,
    step: int,
    model: CSM,
    frontend: tuple[str, str],
    trainer_state: dict,
    keep_last: int,
    adapter: AdapterSpec | None = None,
) -> Path:
    """Model (or adapter) files + everything needed to resume; then prune to the newest `keep_last` steps."""

    def write(tmp: Path) -> None:
        _write_model(tmp, model, frontend, adapter)
        # Through a Python file: a failed write then surfaces as an OSError (a full disk is named),
        # where torch's own file writer reports only "unexpected pos".
        with open(tmp / TRAINER_STATE, "wb") as f:
            torch.save(trainer_state, f)

    target = _write_dir(checkpoints_dir(run_dir) / f"step-{step:06d}", write)
    for old in step_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old)
    return target


def step_dirs(run_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first."""
    root = checkpoints_dir(run_dir)
    found = (
        [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / TRAINER_STATE).is_file()]
        if root.is_dir()
        else []
    )
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_step_dir(run_dir: Path) -> Path | None:
    dirs = step_dirs(run_dir)
    return dirs[-1] if dirs else None


def load_trainer_state(step_dir: Path) -> dict:
    # weights_only: a checkpoint is data, never code.
    return torch.load(step_dir / TRAINER_STATE, map_location="cpu", weights_only=True)
