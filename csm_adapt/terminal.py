"""Console output that reads well in a terminal and in a log file or pipe.

`make_console()` is the one way commands make a rich console: soft-wrapped, so a path, a printed
command or a TOML line is never cut at 80 columns when the output is not a terminal (rich's width
there) and can be copied back. `Progress` is a bar in a terminal, and plain periodic lines (count,
rate, ETA) elsewhere, where a live bar would print nothing until it ends.
"""

from __future__ import annotations

import datetime
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


def make_console(**kwargs) -> Console:
    return Console(soft_wrap=True, **kwargs)


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class Progress:
    """Progress over `total` units (e.g. clips), as a context manager; `advance` takes fractions.

    Not in a terminal: one line every `every_s` seconds and one at the end, like
    `prepare train-000001.tar: 1200/5000 clips (24%), 35.1 clips/s, 0:01:48 left`.
    """

    def __init__(self, console: Console, total: float, *, unit: str, description: str, every_s: float = 10.0):
        self.console, self.total, self.unit, self.description, self.every_s = console, total, unit, description, every_s
        self.completed = 0.0
        self._started = self._last_line = time.monotonic()
        self._bar: RichProgress | None = None
        if console.is_terminal:
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f} " + unit),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif kind is None:
            self.console.print(self.line(time.monotonic()), soft_wrap=True, markup=False, highlight=False)

    def describe(self, description: str) -> None:
        self.description = description
        if self._bar is not None:
            self._bar.update(self._task, description=description)

    def advance(self, amount: float) -> None:
        self.completed = min(self.total, self.completed + amount)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            self.console.print(self.line(now), soft_wrap=True, markup=False, highlight=False)

    def line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self.completed / elapsed
        done = f"{self.completed:.0f}/{self.total:.0f} {self.unit}"
        percent = f"{100 * self.completed / self.total:.0f}%" if self.total else "100%"
        if self.completed >= self.total:
            return f"{self.description}: {done} ({percent}) in {_duration(elapsed)}, {rate:.1f} {self.unit}/s"
        left = f", {_duration((self.total - self.completed) / rate)} left" if rate > 0 else ""
        return f"{self.description}: {done} ({percent}), {rate:.1f} {self.unit}/s{left}"
