"""Training throughput between two log lines, with the clock stopped while the loop does other work
(validation, samples, checkpoints), so frames/s measures training alone."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Throughput:
    def __init__(self) -> None:
        self._start, self._paused = time.perf_counter(), 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - began

    def rates(self, frames: float, rows: float) -> dict[str, float]:
        """Frames and rows (tokens) per second since the last call; starts the next interval."""
        seconds = time.perf_counter() - self._start - self._paused
        self._start, self._paused = time.perf_counter(), 0.0
        return {"train/frames_per_s": frames / seconds, "train/tokens_per_s": rows / seconds}
