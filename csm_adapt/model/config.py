"""Named model shapes: transformer flavors and whole-model configs.

The original checkpoint's `config.json` names its two transformers by flavor (`llama-1B`,
`llama-100M`); the tiny flavors exist so tests and the offline demo run in seconds on a CPU.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class TransformerFlavor:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    rope_base: float = 500_000.0
    # Llama-3 frequency scaling, in the original (torchtune) parameterisation.
    rope_scale_factor: float = 32.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_old_context_len: int = 8192

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


FLAVORS: dict[str, TransformerFlavor] = {
    "llama-1B": TransformerFlavor(16, 32, 8, 2048, 8192),
    "llama-100M": TransformerFlavor(4, 8, 2, 1024, 8192),
    # Benchmark-sized: big enough that the embedding/optimizer balance resembles the real model.
    "tiny-256": TransformerFlavor(4, 4, 2, 256, 1024),
    "tiny-128": TransformerFlavor(2, 4, 2, 128, 512),
    # Test-sized: a forward pass is a few milliseconds.
    "micro-64": TransformerFlavor(2, 4, 2, 64, 128),
    "micro-32": TransformerFlavor(2, 2, 1, 32, 64),
}


def _flavor(instance, attribute, value) -> None:
    if not isinstance(value, str) or value not in FLAVORS:
        raise ValueError(f"{attribute.name}: {value!r} is not a flavor; valid flavors: {', '.join(FLAVORS)}")


def _positive_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name}: expected a positive integer, got {type(value).__name__} {value!r}")


@attrs.frozen
class ModelArgs:
    """Exactly the fields of the original `config.json`, checked for type and range (a checkpoint's
    config is input: a bad one must be named, not fail as a tensor-shape traceback)."""

    backbone_flavor: str = attrs.field(validator=_flavor)
    decoder_flavor: str = attrs.field(validator=_flavor)
    text_vocab_size: int = attrs.field(default=128_256, validator=_positive_int)
    audio_vocab_size: int = attrs.field(default=2051, validator=_positive_int)
    audio_num_codebooks: int = attrs.field(default=32, validator=_positive_int)

    @property
    def backbone(self) -> TransformerFlavor:
        return FLAVORS[self.backbone_flavor]

    @property
    def decoder(self) -> TransformerFlavor:
        return FLAVORS[self.decoder_flavor]

    def to_dict(self) -> dict:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> ModelArgs:
        fields = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{source}: unknown model config key(s) {unknown}; expected {sorted(fields)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: invalid model config: {e}") from None


MODEL_CONFIGS: dict[str, ModelArgs] = {
    "csm-1b": ModelArgs("llama-1B", "llama-100M"),
    # Real vocabularies (the Llama-3 tokenizer and Mimi), small transformers: for benchmarks.
    "tiny": ModelArgs("tiny-256", "tiny-128"),
    # Small text vocabulary matching the bundled offline tokenizer: for tests and the demo.
    "micro": ModelArgs("micro-64", "micro-32", text_vocab_size=1024),
}
