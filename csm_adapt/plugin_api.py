"""What each kind of plugin receives and returns. docs/plugins.md explains them hook by hook."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

from csm_adapt.errors import SampleError

if TYPE_CHECKING:
    # Not at run time: importing torch costs seconds, and `csm-adapt plugins` needs none of it.
    import torch


@attrs.frozen
class NoOptions:
    """Options class for a plugin that takes none: any key under its table is rejected."""


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@runtime_checkable
class AudioSource(Protocol):
    """Audio that is not a file of its own, e.g. bytes inside a dataset's parquet rows.

    `fetch()` returns the encoded bytes (any format soundfile reads) or the path of a file holding
    them, and raises `csm_adapt.errors.AudioError` when there are none (reason "missing"). It is
    called when the prepare step decodes the clip, not when the reader yields it. `str()` names the
    audio in messages and rejects.
    """

    def fetch(self) -> bytes | Path: ...


@attrs.frozen
class Turn:
    """One speaker's utterance. `start`/`end` (seconds) cut a span out of a longer `audio` file.

    Checked when built (a `SampleError` names the field): a speaker "0" read from a CSV must become
    an int before it reaches the shards. `audio` may be given as a str.
    """

    speaker: int | None
    text: str
    audio: Path | AudioSource = attrs.field(converter=lambda value: Path(value) if isinstance(value, str) else value)
    start: float | None = None
    end: float | None = None
    # False for context turns the model hears but is not trained to say.
    target: bool = True

    def __attrs_post_init__(self) -> None:
        problems = []
        if self.speaker is not None and not (isinstance(self.speaker, int) and not isinstance(self.speaker, bool)):
            problems.append(f"speaker must be an int or None, got {_describe(self.speaker)}")
        if not isinstance(self.text, str):
            problems.append(f"text must be a str, got {_describe(self.text)}")
        if not isinstance(self.audio, (Path, AudioSource)):
            problems.append(f"audio must be a Path, a str or an AudioSource, got {_describe(self.audio)}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and not _is_number(value):
                problems.append(f"{name} must be a number of seconds or None, got {_describe(value)}")
        if not isinstance(self.target, bool):
            problems.append(f"target must be a bool, got {_describe(self.target)}")
        if problems:
            raise SampleError(f"Turn(text={self.text!r}): {'; '.join(problems)}")


@attrs.frozen
class Sample:
    """A training example: one turn for an utterance, several for a conversation.

    `source` is "file:line" of the metadata the sample came from, so later errors can point at it.
    Checked when built: a `SampleError` names the source and the field.
    """

    id: str
    turns: tuple[Turn, ...]
    source: str

    def __attrs_post_init__(self) -> None:
        problems = []
        if not isinstance(self.id, str) or not self.id:
            problems.append(f"id must be a non-empty str, got {_describe(self.id)}")
        if not isinstance(self.turns, tuple):
            problems.append(f"turns must be a tuple of Turn (write tuple(turns)), got {type(self.turns).__name__}")
        elif not self.turns:
            problems.append("turns is empty: a sample has at least one Turn")
        else:
            problems += [
                f"turns[{i}] must be a Turn, got {_describe(turn)}"
                for i, turn in enumerate(self.turns)
                if not isinstance(turn, Turn)
            ]
        if not isinstance(self.source, str):
            problems.append(f'source must be a "file:line" str, got {_describe(self.source)}')
        if problems:
            raise SampleError(f"{self.source}: sample {self.id!r}: {'; '.join(problems)}")


@attrs.frozen
class Malformed:
    """Yielded by a reader in place of a Sample for one metadata record it cannot use (too many or
    too few fields, a wrong type, a path outside the dataset): prepare writes it to rejects.jsonl
    and goes on, and stops only when a large share of the records is malformed."""

    source: str  # "file:line"
    detail: str  # the full message, starting with `source`
    reason: str = "malformed"  # short code the rejects are counted by


class DatasetReader(Protocol):
    """Built as `ReaderClass(options)`.

    `read()` yields a `Malformed` naming file:line for a record it cannot make sense of, and raises
    a `CsmAdaptError` when the whole file is unusable (missing, not decodable). Audio problems
    (missing, corrupt, too long) are not its business: the prepare step reports those.
    """

    def read(self) -> Iterator[Sample | Malformed]: ...


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


class Adapter:
    """Base class for adapters, built as `AdapterClass(options)`.

    An adapter changes a CSM in place so that a few parameters train and the rest stay frozen, and
    knows how to save, reload and merge what it trains. The base model's parameters keep their
    original names (`backbone.layers.0.attn.q_proj.weight`), so what an adapter saves never depends
    on how it wraps the model. `state_dict` and `load_state_dict` here cover every parameter that
    trains (`requires_grad`), which is right for most adapters; `apply` and `merge` are the adapter's own.
    """

    def __init__(self, options):
        self.options = options

    def apply(self, model: torch.nn.Module) -> None:
        """Change `model` in place and set `requires_grad` on every parameter: True exactly for what trains."""
        raise NotImplementedError

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The adapter's weights (and any base parameters it trains fully), by their names in `model`."""
        return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def load_state_dict(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Put weights from `state_dict` back into a model this adapter was applied to."""
        import torch

        expected = set(self.state_dict(model))
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"adapter weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)

    def merge(self, model: torch.nn.Module) -> None:
        """Fold the adapter into the base weights: afterwards `model` is a plain CSM of the original layout."""
        raise NotImplementedError


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
