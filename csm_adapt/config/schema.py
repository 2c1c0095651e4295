"""The tables of a recipe. Adding a setting is one line in its table's class.

Tables are keyword-only so required and defaulted fields can sit in any order. Optional settings
default to None (TOML has no null, so a saved recipe simply leaves them out).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs

from csm_adapt.config.objective import Objective, objective_validator
from csm_adapt.config.structure import OUTPUT, SOURCE, Url
from csm_adapt.config.sweep import SweepConfig
from csm_adapt.errors import ConfigError, SampleError
from csm_adapt.model.config import MODEL_CONFIGS
from csm_adapt.model.sources import is_local
from csm_adapt.plugin_api import Malformed, Sample, Turn

# `owner/name` on the Hugging Face hub.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _positive(instance, attribute, value) -> None:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}", attribute)


def _not_above_rows_per_step(instance, attribute, value) -> None:
    if value > instance.rows_per_step:
        raise ValueError(
            f"{value} is larger than train.rows_per_step={instance.rows_per_step} (the rows of a whole optimizer "
            "step, over all ranks): lower it, or raise rows_per_step",
            attribute,
        )


def _non_negative(instance, attribute, value) -> None:
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}", attribute)


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
    if is_local(value) and not Path(value).expanduser().exists():
        if HUB_ID.fullmatch(value):  # shaped like a hub id, but its first part is a local folder
            raise ValueError(f'"{value}": no such file or directory', attribute)
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
    def read(self, reader: Any = None) -> Iterator[Sample | Malformed]:
        """Yield the samples (and `Malformed` records) of `reader`, built from this reference unless
        given; a bad sample's error names the reader and its source."""
        reader = reader if reader is not None else self.create()
        label = f'reader "{self.name}" ({type(reader).__module__}.{type(reader).__qualname__})'
        previous = None
        try:
            for sample in reader.read():
                if isinstance(sample, Malformed):
                    yield sample
                    continue
                if not isinstance(sample, Sample):
                    raise SampleError(
                        f"yielded {type(sample).__name__} {sample!r:.80}, not a csm_adapt.plugin_api.Sample"
                    )
                previous = sample.source
                yield sample
        except SampleError as e:
            where = f" (the sample after {previous})" if previous and not str(e).startswith(previous) else ""
            raise SampleError(f"{label}: {e}{where}") from None


class LossRef(PluginRef):
    NAME_KEY = "strategy"


class LoggerRef(PluginRef):
    pass


class AdapterRef(PluginRef):
    pass


class EvaluatorRef(PluginRef):
    pass


@attrs.frozen(kw_only=True)
class ModelConfig:
    config: str = attrs.field(default="csm-1b", validator=_model_config)  # shape, from MODEL_CONFIGS
    # None: random weights of `config`, for tests and the offline demo; finetuning names a checkpoint.
    checkpoint: str | None = attrs.field(default=None, validator=_source, metadata=SOURCE)
    text_tokenizer: str = attrs.field(default="unsloth/Llama-3.2-1B", validator=_source, metadata=SOURCE)
    audio_codec: str = attrs.field(default="kyutai/moshiko-pytorch-bf16", validator=_source, metadata=SOURCE)


@attrs.frozen(kw_only=True)
class DataConfig:
    reader: ReaderRef
    # Where the prepared shards go: a folder, or a URL fsspec opens (s3://bucket/prefix; docs/data-format.md).
    out: Url | Path = attrs.field(metadata=OUTPUT)
    # With a URL `out`: keyword arguments of its fsspec filesystem (endpoint_url, profile, ...).
    storage_options: dict[str, Any] | None = None
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
    # A shard that does not match index.json: "stop" the run (naming it), or "skip" it (counted, logged).
    on_corrupt: Literal["stop", "skip"] = "stop"
    # Malformed metadata records are rejected one by one; more than this share of them means the
    # reader was given the wrong layout, and prepare stops.
    max_malformed_share: float = attrs.field(default=0.25, validator=_fraction)
    # Clips shorter than this (seconds; 0.16 s is two codec frames) are rejected as "too short".
    min_clip_seconds: float = attrs.field(default=0.16, validator=_non_negative)


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
    rows_per_micro_batch: int = attrs.field(default=4096, validator=[_positive, _not_above_rows_per_step])
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
    # adamw8bit keeps both moments in 8 bits (the `lowmem` extra); see README "Adapters and memory".
    optimizer: str = attrs.field(default="adamw", validator=_in("adamw", "adamw8bit"))
    # With an [adapter]: the frozen base weights in bf16 (half the memory); needs precision = "bf16".
    frozen_dtype: str = attrs.field(default="fp32", validator=_in("fp32", "bf16"))
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
    # What checkpoints/best holds: "val/loss" (or another validation loss), or an eval metric with
    # its direction, "eval/cer:min", measured at each evaluation ([eval]).
    best_by: str = attrs.field(default="val/loss", validator=objective_validator)


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
class EvalConfig:
    """Evaluation during training (and `csm-adapt evaluate --recipe`): generate, then score."""

    every: int = attrs.field(default=500, validator=_positive)  # steps between evaluations
    # JSONL, one prompt a line: {"text": ..., "speaker": 0, "reference": "clip.wav" or [...]}, paths
    # relative to the file. None: held-out validation utterances, their own audio as references.
    prompts: Path | None = None
    max_prompts: int = attrs.field(default=16, validator=_positive)  # validation utterances used (prompts unset)
    max_audio_ms: int = attrs.field(default=10_000, validator=_positive)
    seeds: tuple[int, ...] = (0,)  # every prompt is spoken once per seed
    batch_size: int = attrs.field(default=8, validator=_positive)  # utterances generated together
    temperature: float = attrs.field(default=0.9, validator=_positive)
    topk: int = attrs.field(default=50, validator=_positive)
    evaluators: tuple[EvaluatorRef, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.evaluators:
            raise ValueError(
                "needs at least one evaluator ([[eval.evaluators]] name = ...)", _field(EvalConfig, "evaluators")
            )
        if not self.seeds:
            raise ValueError("needs at least one seed", _field(EvalConfig, "seeds"))
        names = [e.name for e in self.evaluators]
        if len(set(names)) != len(names):
            raise ValueError(f"an evaluator is listed twice: {', '.join(names)}", _field(EvalConfig, "evaluators"))

    def metric_names(self) -> set[str]:
        """What the listed evaluators declare they measure."""
        return {m for e in self.evaluators for m in getattr(e.implementation, "metrics", ())}


def _field(cls: type, name: str) -> attrs.Attribute:
    return attrs.fields_dict(cls)[name]


@attrs.frozen(kw_only=True)
class OutputConfig:
    run_dir: Path = attrs.field(metadata=OUTPUT)


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
    # None: every parameter `train.trainable` names trains (full finetuning); else the adapter decides.
    adapter: AdapterRef | None = None

    eval: EvalConfig | None = None  # None: no evaluation during training

    def __attrs_post_init__(self) -> None:
        # One way to choose what trains: `train.trainable` without an adapter, the adapter's options with one.
        field = attrs.fields(Recipe).adapter
        t = self.train
        if self.adapter is not None and (t.trainable != "all" or t.freeze_text_embeddings):
            raise ValueError(
                "with an adapter, the adapter decides what trains: leave train.trainable and "
                "train.freeze_text_embeddings at their defaults (use the adapter's own options)",
                field,
            )
        if t.frozen_dtype != "fp32" and self.adapter is None:
            raise ValueError('train.frozen_dtype = "bf16" needs an adapter (a full finetune has no frozen base)', field)
        if t.frozen_dtype == "bf16" and t.precision != "bf16":
            raise ValueError('train.frozen_dtype = "bf16" needs train.precision = "bf16"', field)

        # Checked here, across tables: choosing by an eval metric needs an evaluator that makes it.
        metrics = self.eval.metric_names() if self.eval else None
        choices = [("train.best_by", self.train.best_by)]
        if self.sweep is not None:
            choices.append(("sweep.objective", self.sweep.objective))
        for key, spec in choices:
            problem = Objective.parse(spec).missing_from(metrics)
            if problem:
                raise ConfigError(f"{key}: {problem}")
