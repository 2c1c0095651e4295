"""The tables of a recipe. Adding a setting is one line in its table's class.

Tables are keyword-only so required and defaulted fields can sit in any order. Optional settings
default to None (TOML has no null, so a saved recipe simply leaves them out).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs

from csm_adapt.model.config import MODEL_CONFIGS
from csm_adapt.plugin_api import Turn
from csm_adapt.sweep.config import SweepConfig

# `owner/name` on the Hugging Face hub.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _positive(instance, attribute, value) -> None:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}", attribute)


def _fraction(instance, attribute, value) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"must be in [0, 1), got {value}", attribute)


def _model_config(instance, attribute, value) -> None:
    if value not in MODEL_CONFIGS:
        raise ValueError(f'unknown model config "{value}"; available: {", ".join(MODEL_CONFIGS)}', attribute)


def _source(instance, attribute, value) -> None:
    """A local file/directory, a hub id, or "offline" (the bundled tokenizer / fitted codec);
    nothing is downloaded to check it."""
    if value is None or value == "offline":
        return
    if not (HUB_ID.fullmatch(value) or Path(value).expanduser().exists()):
        raise ValueError(f'"{value}" is neither an existing path, a hub id like "owner/name", nor "offline"', attribute)


@attrs.frozen
class PluginRef:
    """A recipe's choice of plugin: its registered name, its validated options, its implementation."""

    NAME_KEY: ClassVar[str] = "name"  # the key naming the plugin in the recipe table

    name: str
    options: Any
    implementation: Any = attrs.field(eq=False, repr=False)

    def create(self, *args: Any) -> Any:
        """Readers and loss strategies are built with their options; loggers also get the run dir."""
        return self.implementation(self.options, *args)


class ReaderRef(PluginRef):
    pass


class LossRef(PluginRef):
    NAME_KEY = "strategy"


class LoggerRef(PluginRef):
    pass


@attrs.frozen(kw_only=True)
class ModelConfig:
    config: str = attrs.field(default="csm-1b", validator=_model_config)  # shape, from MODEL_CONFIGS
    # None: random weights of `config`, for tests and the offline demo; finetuning names a checkpoint.
    checkpoint: str | None = attrs.field(default=None, validator=_source)
    text_tokenizer: str = attrs.field(default="unsloth/Llama-3.2-1B", validator=_source)
    audio_codec: str = attrs.field(default="kyutai/moshiko-pytorch-bf16", validator=_source)


@attrs.frozen(kw_only=True)
class DataConfig:
    reader: ReaderRef
    out: Path  # where the prepared shards go
    max_rows: int = attrs.field(default=2048, validator=_positive)  # longer samples are rejected
    # Validation: the samples of `val_reader` when given, else this fraction of `reader`'s
    # clips (or speakers, `val_by`), chosen by hashing their id (or speaker) with `seed`.
    val_reader: ReaderRef | None = None
    val_fraction: float = attrs.field(default=0.02, validator=_fraction)
    val_by: Literal["clip", "speaker"] = "clip"
    seed: int = 0
    shard_samples: int = attrs.field(default=1000, validator=_positive)  # reader samples per shard
    # Mimi encodes several clips per call: at most this much audio, counting padding to the longest.
    encode_batch_seconds: float = attrs.field(default=120.0, validator=_positive)


def _in(*choices: str):
    def check(instance, attribute, value) -> None:
        if value not in choices:
            raise ValueError(f'"{value}" is not one of: {", ".join(choices)}', attribute)

    return check


@attrs.frozen(kw_only=True)
class TrainConfig:
    steps: int = attrs.field(default=1000, validator=_positive)  # optimizer steps
    # Token budget: rows (sequence positions) per optimizer step over all ranks, and per forward
    # pass on one rank; gradient accumulation covers the difference.
    rows_per_step: int = attrs.field(default=16_384, validator=_positive)
    rows_per_micro_batch: int = attrs.field(default=4096, validator=_positive)
    lr: float = attrs.field(default=3e-5, validator=_positive)
    weight_decay: float = 0.002
    beta1: float = 0.9  # AdamW betas
    beta2: float = 0.95
    warmup_steps: int = 100
    schedule: str = attrs.field(default="cosine", validator=_in("cosine", "linear", "constant", "exponential"))
    min_lr_ratio: float = attrs.field(default=0.1, validator=_fraction)  # cosine/linear floor, as a fraction of lr
    decay_rate: float = attrs.field(default=0.999, validator=_positive)  # exponential: lr multiplier per step
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    # "auto": bf16 on CUDA and on CPUs with bf16 units, else fp32 (csm_adapt/training/precision.py).
    precision: str = attrs.field(default="auto", validator=_in("auto", "bf16", "fp16", "fp32"))
    trainable: str = attrs.field(default="all", validator=_in("all", "backbone", "decoder"))
    freeze_text_embeddings: bool = False
    activation_checkpointing: bool = False
    compile: bool = False
    parallel: str = attrs.field(default="ddp", validator=_in("ddp", "fsdp"))  # under torchrun
    device: str = "auto"  # "auto": CUDA when available, else CPU
    num_workers: int = 2  # DataLoader workers per rank
    shuffle_buffer: int = attrs.field(default=1000, validator=_positive)  # samples shuffled together
    pack_buffer: int = attrs.field(default=512, validator=_positive)  # samples packed together
    pad_multiple: int = attrs.field(default=64, validator=_positive)  # sequence lengths rounded up to this
    seed: int = 0
    log_every: int = attrs.field(default=10, validator=_positive)
    val_every: int = attrs.field(default=200, validator=_positive)
    checkpoint_every: int = attrs.field(default=500, validator=_positive)
    keep_last: int = attrs.field(default=2, validator=_positive)


@attrs.frozen(kw_only=True)
class SamplePrompt:
    """A text to say in `speaker`'s voice, optionally after `context` turns (voice prompting)."""

    text: str
    speaker: int = 0
    context: tuple[Turn, ...] = ()


@attrs.frozen(kw_only=True)
class SamplesConfig:
    every: int = attrs.field(default=500, validator=_positive)  # steps between generations
    prompts: tuple[SamplePrompt, ...] = ()
    max_audio_ms: int = attrs.field(default=10_000, validator=_positive)
    temperature: float = attrs.field(default=0.9, validator=_positive)
    topk: int = attrs.field(default=50, validator=_positive)


@attrs.frozen(kw_only=True)
class OutputConfig:
    run_dir: Path


@attrs.frozen(kw_only=True)
class Recipe:
    plugins: tuple[str, ...] = ()  # local plugin files (relative to the recipe) or modules
    model: ModelConfig = attrs.field(factory=ModelConfig)
    data: DataConfig
    loss: LossRef
    train: TrainConfig = attrs.field(factory=TrainConfig)
    loggers: tuple[LoggerRef, ...] = ()
    samples: SamplesConfig = attrs.field(factory=SamplesConfig)
    output: OutputConfig
    sweep: SweepConfig | None = None  # read by `csm-adapt sweep` only
