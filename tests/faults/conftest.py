"""The fault-injection suite's shared fixture: the demo dataset, prepared once."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import csm, demo_subset, write_recipe


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """8 demo clips, prepared once (shards in `prepared/`)."""
    root = demo_subset(tmp_path_factory.mktemp("faults") / "demo8", 8)
    recipe = write_recipe(root / "prepare.toml", root, data=root / "prepared", run_dir=root / "unused")
    code, out = csm(["prepare", recipe, "--device", "cpu"], root)
    assert code == 0, out
    return root
