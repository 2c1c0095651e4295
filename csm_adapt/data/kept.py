"""The one check that prepared data hold something to train on, and its message.

`prepare` runs it after writing (so a prepare that kept nothing exits non-zero) and on data it finds
up to date; the loader runs it when a split is empty. All give the same summary: how many samples
were read and rejected, the reject reasons counted, and where `rejects.jsonl` says why, clip by clip.
"""

from __future__ import annotations

from pathlib import Path

from csm_adapt.data.format import REJECTS
from csm_adapt.data.storage import Store, member
from csm_adapt.errors import CsmAdaptError


def rejects_summary(summary: dict) -> str:
    """`40 samples read, 40 rejected (missing: 38, corrupt: 2)` from index.json's summary."""
    reasons = ", ".join(f"{reason}: {count}" for reason, count in summary.get("rejected_by_reason", {}).items())
    text = f"{summary.get('samples_read', 0)} samples read, {summary.get('rejected', 0)} rejected"
    return f"{text} ({reasons})" if reasons else text


def check_kept(summary: dict, out: Path | str | Store, split: str = "train") -> None:
    """Fail when `split` of the prepared data in `out` (a folder or URL) kept no sample (`summary`: index.json's)."""
    if summary.get("kept", {}).get(split, 0) > 0:
        return
    raise CsmAdaptError(
        f"{out}: the prepared data kept no {split} samples: {rejects_summary(summary)}; "
        f"why, clip by clip: {member(out, REJECTS)}"
    )
