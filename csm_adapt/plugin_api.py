"""What each kind of plugin receives and returns. docs/plugins.md explains them hook by hook."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    # Not at run time: importing torch costs seconds, and `csm-adapt plugins` needs none of it.
    import torch


@attrs.frozen
class NoOptions:
    """Options class for a plugin that takes none: any key under its table is rejected."""


@attrs.frozen
class Turn:
    """One speaker's utterance. `start`/`end` (seconds) cut a span out of a longer `audio` file."""

    speaker: int | None
    text: str
    audio: Path
    start: float | None = None
    end: float | None = None
    # False for context turns the model hears but is not trained to say.
    target: bool = True


@attrs.frozen
class Sample:
    """A training example: one turn for an utterance, several for a conversation.

    `source` is "file:line" of the metadata the sample came from, so later errors can point at it.
    """

    id: str
    turns: tuple[Turn, ...]
    source: str


class DatasetReader(Protocol):
    """Built as `ReaderClass(options)`.

    `read()` raises a `CsmAdaptError` naming file:line for metadata it cannot make sense of. Audio
    problems (missing, corrupt, too long) are not its business: the prepare step reports those.
    """

    def read(self) -> Iterator[Sample]: ...


@attrs.frozen
class LossParts:
    """Mean cross-entropies of one step and how many frames each was averaged over."""

    c0: torch.Tensor
    decoder: torch.Tensor
    c0_frames: int
    decoder_frames: int


class LossStrategy(Protocol):
    """Built as `StrategyClass(options)`."""

    def select_decoder_frames(self, target_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Which audio frames ([B, S] bool) get the depth-decoder loss; a subset of `target_mask`."""
        ...

    def combine(self, parts: LossParts) -> torch.Tensor:
        """The scalar loss to backpropagate."""
        ...


@attrs.frozen
class RunInfo:
    """What a logger learns when training starts."""

    total_steps: int
    start_step: int  # > 0 when the run resumes from a checkpoint
    recipe: dict  # the resolved recipe as plain TOML-able values
    recipe_toml: str


class Logger:
    """Base class for loggers, built as `LoggerClass(options, run_dir)`.

    Every method is a no-op here, so a logger overrides only what it can record. `begin` is called
    once before any other method, `close` once at the end.
    """

    def __init__(self, options, run_dir: Path):
        self.options = options
        self.run_dir = run_dir

    def begin(self, run: RunInfo) -> None:
        pass

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def log_audio(self, step: int, tag: str, wav: torch.Tensor, sample_rate: int, description: str = "") -> None:
        pass

    def log_text(self, step: int, tag: str, text: str) -> None:
        pass

    def log_hparams(self, hparams: dict, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


@attrs.frozen(eq=False)
class Utterance:
    """One generated utterance, as an evaluator receives it.

    `audio` is mono float32 at 24 kHz (`audio_io.SAMPLE_RATE`); `frames` the [K, F] codes it was
    decoded from; `stopped` is True when generation ended with the EOS frame before `max_audio_ms`
    (False: it was cut off, often babbling). `references` are clips of the same speaker (mono float32
    at 24 kHz), empty when the eval set has none. `prompt_id` and `seed` tell repeated draws apart.
    """

    prompt_id: str
    text: str
    speaker: int | None
    audio: torch.Tensor
    frames: torch.Tensor
    stopped: bool
    max_audio_ms: int
    references: tuple[torch.Tensor, ...] = ()
    seed: int = 0


@attrs.frozen
class EvalContext:
    """What an evaluator learns once, when it is built.

    `device`: where its models go (the training device). `chars_per_second`: the speaking rate of
    the training set, measured at prepare time (characters of text per second of audio; None when
    unknown, e.g. a prompts file evaluated without a recipe).
    """

    device: torch.device
    chars_per_second: float | None = None


class Evaluator:
    """Base class for evaluators, built once per run as `EvaluatorClass(options, context)`.

    Load models in `__init__` (placed on `context.device`): the engine builds an evaluator once and
    calls `evaluate` for every batch of every evaluation. `metrics` lists the names of the numbers
    `evaluate` returns (recipes may only choose checkpoints by these); `models()` names what
    produced each of them, since figures from different ASR or speaker models are not comparable.
    """

    metrics: tuple[str, ...] = ()

    def __init__(self, options, context: EvalContext):
        self.options = options
        self.context = context

    def evaluate(self, batch: Sequence[Utterance]) -> list[dict[str, float | str]]:
        """One dict per utterance, in order: float values are metrics (named in `metrics`, reported
        as `eval/<name>`), str values are notes shown in the report (e.g. an ASR transcript).
        A metric that does not apply to an utterance (no reference clip) is left out of its dict."""
        raise NotImplementedError

    def models(self) -> dict[str, str]:
        """Metric name -> the model (and version) that produced it; empty for model-free metrics."""
        return {}
