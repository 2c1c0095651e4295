"""The run's loggers as one object: every call goes to each logger the recipe names.

Only rank 0 logs: other ranks hold an empty fan-out, so the loop calls it the same way everywhere.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from csm_adapt.config.schema import Recipe
from csm_adapt.plugin_api import Logger, RunInfo
from csm_adapt.training.distributed import Dist


class LoggerFanOut(Logger):
    def __init__(self, loggers: Sequence[Logger]):
        self.loggers = tuple(loggers)

    @classmethod
    @contextlib.contextmanager
    def open(cls, recipe: Recipe, run_dir: Path, d: Dist) -> Iterator[LoggerFanOut]:
        """The recipe's loggers on rank 0 (none elsewhere), closed however the run ends."""
        fan_out = cls([ref.create(run_dir) for ref in recipe.loggers] if d.is_main else [])
        try:
            yield fan_out
        finally:
            fan_out.close()

    def begin(self, run: RunInfo) -> None:
        for logger in self.loggers:
            logger.begin(run)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log_scalars(step, scalars)

    def log_audio(self, step: int, tag: str, wav: torch.Tensor, sample_rate: int, description: str = "") -> None:
        for logger in self.loggers:
            if not description:
                logger.log_audio(step, tag, wav, sample_rate)
            elif "description" in inspect.signature(logger.log_audio).parameters:
                logger.log_audio(step, tag, wav, sample_rate, description=description)
            else:  # a logger written before audio had descriptions: the text goes beside it, same tag
                logger.log_audio(step, tag, wav, sample_rate)
                logger.log_text(step, tag, description)

    def log_text(self, step: int, tag: str, text: str) -> None:
        for logger in self.loggers:
            logger.log_text(step, tag, text)

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        for logger in self.loggers:
            logger.log_hparams(hparams, metrics)

    def close(self) -> None:
        # Every logger gets closed even when one of them fails to.
        with contextlib.ExitStack() as stack:
            for logger in self.loggers:
                stack.callback(logger.close)
