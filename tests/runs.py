"""Training-run helpers for the tests: a micro-model recipe on LJSpeech-layout clips, and its metrics."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "recipes" / "demo_data"

# A micro model trained a few steps on LJSpeech-layout clips, logging every step to metrics.jsonl.
# The one recipe template of the tests' training runs (the fault suite's too, tests/faults/faultkit.py).
TRAIN_RECIPE = """
plugins = {plugins}

[model]
config = "micro"
text_tokenizer = "offline"
audio_codec = "offline"

[data]
out = "{data}"
max_rows = 512
val_fraction = {val_fraction}
shard_samples = {shard_samples}
{data_extra}
[data.reader]
name = "ljspeech"
root = "{root}"
speakers = "{speakers}"

[loss]
strategy = "{strategy}"

[train]
steps = {steps}
rows_per_step = 1024
rows_per_micro_batch = 512
lr = 3e-3
warmup_steps = 2
precision = "fp32"
device = "cpu"
num_workers = 0
log_every = 1
val_every = {val_every}
checkpoint_every = {checkpoint_every}
{train_extra}
[[loggers]]
name = "jsonl"
{extra}
[output]
run_dir = "{run_dir}"
"""


def write_train_recipe(
    where: Path,
    dataset: Path,
    *,
    run_dir: Path,
    data: Path | None = None,
    strategy="full",
    plugins=(),
    extra="",
    data_extra="",
    train_extra="",
    steps=8,
    val_fraction=0.2,
    shard_samples=100,
    val_every=4,
    checkpoint_every=4,
) -> Path:
    """A recipe training on `dataset` (an LJSpeech folder), written to `where` (a .toml file, or a
    folder to hold recipe.toml); returns its path. Shards go to `data` (default: `dataset`/prepared).

    `plugins` are local plugin specs; `data_extra` and `train_extra` are TOML lines added to [data]
    and [train]; `extra` is TOML appended after the jsonl logger (more loggers, a [samples] table...).
    """
    path = Path(where) if Path(where).suffix == ".toml" else Path(where) / "recipe.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = TRAIN_RECIPE.format(
        plugins=json.dumps(list(plugins)), data=data or Path(dataset) / "prepared", root=dataset,
        speakers=DEMO_DATA / "speakers.json", strategy=strategy, extra=extra, run_dir=run_dir,
        data_extra=data_extra, train_extra=train_extra, steps=steps, val_fraction=val_fraction,
        shard_samples=shard_samples, val_every=val_every, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    path.write_text(text, "utf-8")
    return path


def read_metrics(run_dir: Path, key: str) -> dict[int, float]:
    """The last value logged for `key` at each step in a run's metrics.jsonl (a resumed run logs some steps twice)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["name"] == key:
            out[record["step"]] = record["value"]
    return out


# A local plugin (write it next to a recipe): a logger that kills the run at a step, before that step's checkpoint.
KILLER = '''
import attrs
from csm_adapt import hookimpl
from csm_adapt.plugin_api import Logger


@attrs.frozen
class KillOptions:
    at_step: int


class Killer(Logger):
    """Dies at a step, like a run killed mid-way (before that step's checkpoint)."""

    def log_scalars(self, step, scalars):
        if step == self.options.at_step:
            raise KeyboardInterrupt(f"killed at step {step}")


@hookimpl
def register_loggers(register):
    register("killer", Killer, options=KillOptions)
'''
