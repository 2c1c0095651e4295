"""A test helper: another process holding a csm-adapt directory lock, as a second `run`,
`prepare` or `sweep` would."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_HOLD = """
import sys, time
from csm_adapt.files import DirLock
DirLock(sys.argv[1], "holder").acquire()
print("held", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def lock_held_elsewhere(directory: Path) -> Iterator[int]:
    """Yields the PID of a process holding `directory`'s lock; kills it (-9, like a crash) at the end."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
