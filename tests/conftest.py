"""Fixtures shared by the test files: demo clips, prepared shards, tiny models (plain helpers: tests/runs.py).

Everything here is small enough for a CPU run: the "micro" model config and a dozen demo clips.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from csm_adapt.config.recipe import load_recipe
from csm_adapt.data.prepare import prepare
from csm_adapt.model.checkpoint import build_model
from csm_adapt.model.config import MODEL_CONFIGS
from csm_adapt.model.csm import CSM
from runs import DEMO_DATA, write_train_recipe  # tests/runs.py


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory) -> Callable[[int], Path]:
    """`demo_clips(n)`: an LJSpeech folder holding the first n clips of the shipped demo set (made once per n)."""
    made: dict[int, Path] = {}

    def make(n: int) -> Path:
        if n not in made:
            root = tmp_path_factory.mktemp(f"demo{n}")
            lines = (DEMO_DATA / "metadata.csv").read_text("utf-8").splitlines()[:n]
            (root / "metadata.csv").write_text("\n".join(lines) + "\n", "utf-8")
            (root / "wavs").symlink_to(DEMO_DATA / "wavs")
            made[n] = root
        return made[n]

    return make


@pytest.fixture(scope="session")
def demo_dataset(demo_clips) -> Path:
    """12 demo clips (10 train, 2 val with the training recipe's val_fraction), prepared once per session."""
    root = demo_clips(12)
    resolved = load_recipe(write_train_recipe(root, root, run_dir=root / "unused"))
    prepare(resolved.data, resolved.model)
    return root


@pytest.fixture(scope="session")
def micro_model() -> CSM:
    """A seeded random "micro" CSM (eval mode) as build_model makes it. Shared: do not modify it."""
    return build_model("micro", seed=3)


@pytest.fixture(scope="session")
def sharp_micro_model() -> CSM:
    """A "micro" CSM with large weights (std 0.3, eval mode): outputs differ visibly when anything is wrong.
    Shared: do not modify it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CSM(MODEL_CONFIGS["micro"])
        model.init_weights(std=0.3)
    return model.eval()
