"""The `console` logger: a rich progress bar while training, a table at each validation.

On a terminal the bar redraws in place. Elsewhere (CI, `> train.log`) a live bar would print only
when it finishes, so each logged step becomes one plain line instead.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from csm_adapt import hookimpl
from csm_adapt.plugin_api import Logger, RunInfo

if TYPE_CHECKING:
    import torch

# Per-codebook accuracies: "acc/c00".."acc/c31", possibly under a prefix ("val/acc/c05").
ACCURACY = re.compile(r"(?:^|/)acc/c(\d+)$")


def _positive(instance, attribute, value) -> None:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}", attribute)


@attrs.frozen(kw_only=True)
class ConsoleOptions:
    refresh_per_second: float = attrs.field(default=2.0, validator=_positive)  # bar redraws (terminal only)


class ConsoleLogger(Logger):
    def __init__(self, options: ConsoleOptions, run_dir: Path, console: Console | None = None):
        super().__init__(options, run_dir)
        self.console = console or Console(soft_wrap=True)  # log lines carry paths: never cut them
        self._progress = Progress(
            TextColumn("step"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[summary]}"),
            console=self.console,
            refresh_per_second=options.refresh_per_second,
        )
        self._task = self._progress.add_task("train", start=False, summary="")

    def begin(self, run: RunInfo) -> None:
        self._progress.update(self._task, total=run.total_steps, completed=run.start_step)
        self._progress.start_task(self._task)
        resumed = f", resuming after step {run.start_step}" if run.start_step else ""
        self.console.print(f"training for {run.total_steps} steps{resumed}; logs in {self.run_dir}")
        if self.console.is_terminal:
            self._progress.start()

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        train = _strip_prefix(scalars, "train/")
        if train:
            summary = _train_summary(train)
            self._progress.update(self._task, completed=step, summary=summary)
            if not self.console.is_terminal:
                self.console.print(self._plain_line(step, summary))
        val = _strip_prefix(scalars, "val/")
        if val:
            self.console.print(_metrics_table(f"validation at step {step}", val))

    def _plain_line(self, step: int, summary: str) -> str:
        task = self._progress.tasks[self._task]
        left = task.time_remaining
        eta = "" if left is None else f"  eta {datetime.timedelta(seconds=int(left))}"
        return f"step {step}/{int(task.total)}  {summary}{eta}"

    def log_audio(self, step: int, tag: str, wav: torch.Tensor, sample_rate: int) -> None:
        self.console.print(f"step {step}: {tag}: {wav.shape[-1] / sample_rate:.1f} s of audio")

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.console.print(f"step {step}: {tag}: {text}")

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        self.console.print(_metrics_table("final metrics", metrics))

    def close(self) -> None:
        if self.console.is_terminal:  # as in begin: stopping a bar never started prints a blank line
            self._progress.stop()


def _strip_prefix(scalars: dict[str, float], prefix: str) -> dict[str, float]:
    return {name[len(prefix) :]: value for name, value in scalars.items() if name.startswith(prefix)}


def _train_summary(train: dict[str, float]) -> str:
    shown = [("loss", "loss {:.4f}"), ("lr", "lr {:.2e}"), ("frames_per_s", "{:.0f} frames/s")]
    return "  ".join(form.format(train[name]) for name, form in shown if name in train)


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    """Losses and other metrics one per row; the 32 accuracies folded into codebook 0 and the mean of 1..31."""
    table = Table("metric", "value", title=title, title_justify="left")
    accuracies = {}
    for name, value in metrics.items():
        codebook = ACCURACY.search(name)
        if codebook:
            accuracies[int(codebook[1])] = value
        else:
            table.add_row(name, f"{value:.4f}")
    if 0 in accuracies:
        table.add_row("acc c0", f"{accuracies.pop(0):.3f}")
    if accuracies:
        mean = sum(accuracies.values()) / len(accuracies)
        table.add_row(f"acc c{min(accuracies)}..c{max(accuracies)} (mean)", f"{mean:.3f}")
    return table


@hookimpl
def register_loggers(register):
    register("console", ConsoleLogger, options=ConsoleOptions)
