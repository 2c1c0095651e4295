"""What each kind of plugin receives and returns. docs/plugins.md explains them hook by hook."""

from __future__ import annotations

from collections.abc import Iterator
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

    def log_audio(self, step: int, tag: str, wav: torch.Tensor, sample_rate: int) -> None:
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
