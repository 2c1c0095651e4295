"""The `jsonl` logger: every scalar as one JSON line in `<run_dir>/metrics.jsonl`.

Plain, append-only and greppable; a resumed run keeps appending to the same file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from csm_adapt import hookimpl
from csm_adapt.plugin_api import Logger, NoOptions

FILE_NAME = "metrics.jsonl"


class JsonlLogger(Logger):
    def __init__(self, options: NoOptions, run_dir: Path):
        super().__init__(options, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(run_dir / FILE_NAME, "a", encoding="utf-8")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        now = time.time()
        for name, value in scalars.items():
            record = {"step": step, "time": now, "name": name, "value": float(value)}
            self._file.write(json.dumps(record) + "\n")
        # Flushed per call so a killed run loses no logged step.
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@hookimpl
def register_loggers(register):
    register("jsonl", JsonlLogger)
