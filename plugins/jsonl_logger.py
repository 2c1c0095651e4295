"""The `jsonl` logger: every scalar as one JSON line in `<run_dir>/metrics.jsonl`.

Plain, append-only and greppable. A resumed run first drops the records of steps after the
checkpoint it resumes from (the killed run logged them, the resumed run logs them again), so that
the file of a resumed run holds the same steps and values as that of an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from csm_adapt import hookimpl
from csm_adapt.files import write_text_atomic
from csm_adapt.plugin_api import Logger, NoOptions, RunInfo

FILE_NAME = "metrics.jsonl"


class JsonlLogger(Logger):
    def __init__(self, options: NoOptions, run_dir: Path):
        super().__init__(options, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = None

    def begin(self, run: RunInfo) -> None:
        path = self.run_dir / FILE_NAME
        if run.start_step:
            _truncate_after(path, run.start_step)
        elif path.exists():
            path.unlink()  # a fresh run (the run directory held no checkpoint): no earlier curve to keep
        self._file = open(path, "a", encoding="utf-8")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        now = time.time()
        for name, value in scalars.items():
            record = {"step": step, "time": now, "name": name, "value": float(value)}
            self._file.write(json.dumps(record) + "\n")
        # Flushed per call so a killed run loses no logged step.
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _truncate_after(path: Path, step: int) -> None:
    """Keep the records up to `step` (and drop a last line cut short by a kill), atomically."""
    if not path.exists():
        return
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(json.dumps(record) + "\n")
    write_text_atomic(path, "".join(kept))


@hookimpl
def register_loggers(register):
    register("jsonl", JsonlLogger)
