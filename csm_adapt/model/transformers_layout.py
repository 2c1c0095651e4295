"""Pure conversion between the original CSM checkpoint layout and the `transformers` CSM layout.

transformers' `CsmForConditionalGeneration` stores the same weights under other names, with the
q/k projection rows permuted for its rotate-half RoPE (ours is interleaved), its Llama-3 RoPE
scaling written with different (equivalent) numbers, and the audio embedding table shared by the
backbone and the depth decoder. Both directions are exact: original -> transformers -> original
returns bit-identical tensors.
"""

from __future__ import annotations

import math

import torch

from csm_adapt.errors import CheckpointError
from csm_adapt.model.config import FLAVORS, ModelArgs, TransformerFlavor

# Per-layer names; the layer prefixes differ between backbone and decoder (see _LAYER_PREFIXES).
_LAYER_NAMES = {
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.output_proj.weight": "self_attn.o_proj.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "sa_norm.scale": "input_layernorm.weight",
    "mlp_norm.scale": "post_attention_layernorm.weight",
}
_LAYER_PREFIXES = {"backbone.layers.": "backbone_model.layers.", "decoder.layers.": "depth_decoder.model.layers."}
_TOP_NAMES = {
    "text_embeddings.weight": "embed_text_tokens.weight",
    # transformers ties the backbone's audio table to this one and saves only this name.
    "audio_embeddings.weight": "depth_decoder.model.embed_tokens.weight",
    "projection.weight": "depth_decoder.model.inputs_embeds_projector.weight",
    "codebook0_head.weight": "lm_head.weight",
    "audio_head": "depth_decoder.codebooks_head.weight",
    "backbone.norm.scale": "backbone_model.norm.weight",
    "decoder.norm.scale": "depth_decoder.model.norm.weight",
}
# The tied twin of depth_decoder.model.embed_tokens.weight; a file may hold either or both.
_BACKBONE_AUDIO_EMBEDDINGS = "backbone_model.embed_tokens.embed_audio_tokens.weight"
# The Mimi codec's weights travel in transformers checkpoints; csm-adapt loads Mimi separately.
_CODEC_PREFIX = "codec_model."

# CsmConfig's defaults (= csm-1b), used for keys that a saved config.json leaves out.
_BACKBONE_DEFAULTS = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=500_000.0,
    rope_scaling=None,
)
_DECODER_DEFAULTS = dict(
    hidden_size=1024,
    intermediate_size=8192,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=33,
    rms_norm_eps=1e-5,
    rope_theta=500_000.0,
    rope_scaling=None,
)


def hf_name(name: str) -> str:
    """Original parameter name -> transformers name."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    for prefix, hf_prefix in _LAYER_PREFIXES.items():
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            if rest in _LAYER_NAMES:
                return f"{hf_prefix}{index}.{_LAYER_NAMES[rest]}"
    raise KeyError(f"not a CSM parameter name: {name!r}")


def _original_name(hf: str) -> str | None:
    if hf == _BACKBONE_AUDIO_EMBEDDINGS:
        return "audio_embeddings.weight"
    for name, hf_top in _TOP_NAMES.items():
        if hf == hf_top:
            return name
    for prefix, hf_prefix in _LAYER_PREFIXES.items():
        if hf.startswith(hf_prefix):
            index, rest = hf[len(hf_prefix) :].split(".", 1)
            for ours, theirs in _LAYER_NAMES.items():
                if rest == theirs:
                    return f"{prefix}{index}.{ours}"
    return None


def _heads(name: str, tensor: torch.Tensor, args: ModelArgs) -> int | None:
    """Number of heads whose rows a q/k projection holds; None for other tensors.

    A q/k tensor of the wrong shape is left alone so that loading reports its shape.
    """
    flavor = args.backbone if name.startswith("backbone.") else args.decoder
    if name.endswith("attn.q_proj.weight"):
        heads = flavor.num_heads
    elif name.endswith("attn.k_proj.weight"):
        heads = flavor.num_kv_heads
    else:
        return None
    return heads if tensor.shape == (heads * flavor.head_dim, flavor.embed_dim) else None


def rows_to_transformers(weight_name: str, rows: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """A tensor with one row per output of weight `weight_name` (a LoRA B, a DoRA magnitude), its rows
    in the order `to_transformers` gives that weight's rows: W' = P W and (B A)' = (P B) A."""
    flavor = args.backbone if weight_name.startswith("backbone.") else args.decoder
    if weight_name.endswith("attn.q_proj.weight"):
        heads = flavor.num_heads
    elif weight_name.endswith("attn.k_proj.weight"):
        heads = flavor.num_kv_heads
    else:
        return rows
    return _interleaved_to_half(rows.reshape(rows.shape[0], -1), heads).reshape(rows.shape)


def _interleaved_to_half(w: torch.Tensor, heads: int) -> torch.Tensor:
    # Within each head, rows (0, 1, 2, 3, ...) as pairs -> the even rows, then the odd rows.
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous()


def _half_to_interleaved(w: torch.Tensor, heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols).contiguous()


def _rope_scaling(flavor: TransformerFlavor, max_positions: int) -> dict:
    """transformers' numbers for our Llama-3 scaling curve.

    The curve depends only on the factor and on old_context/low and old_context/high, so scaling
    all three of (old_context, low, high) by the same power of two keeps it bit-identical.
    transformers warns unless original_max_position_embeddings < max_position_embeddings; halving
    until it is at most half of max_positions reproduces the published csm-1b numbers
    (1024/0.125/0.5 for the backbone, 16/(1/512)/(1/128) for the decoder).
    """
    scale = 1.0
    while flavor.rope_old_context_len * scale > max_positions / 2 and (flavor.rope_old_context_len * scale) % 2 == 0:
        scale /= 2
    return {
        "rope_type": "llama3",
        "factor": float(flavor.rope_scale_factor),
        "low_freq_factor": flavor.rope_low_freq_factor * scale,
        "high_freq_factor": flavor.rope_high_freq_factor * scale,
        "original_max_position_embeddings": int(flavor.rope_old_context_len * scale),
    }


def _transformer_config(flavor: TransformerFlavor, max_positions: int) -> dict:
    return {
        "hidden_size": flavor.embed_dim,
        "intermediate_size": flavor.intermediate_dim,
        "num_hidden_layers": flavor.num_layers,
        "num_attention_heads": flavor.num_heads,
        "num_key_value_heads": flavor.num_kv_heads,
        "head_dim": flavor.head_dim,
        "max_position_embeddings": max_positions,
        "rms_norm_eps": flavor.norm_eps,
        "rope_theta": flavor.rope_base,
        "rope_scaling": _rope_scaling(flavor, max_positions),
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
    }


def to_transformers(state_dict: dict[str, torch.Tensor], args: ModelArgs) -> tuple[dict[str, torch.Tensor], dict]:
    """Original state dict + config -> transformers state dict + `config.json` contents.

    The Mimi codec is not included: transformers builds `codec_model` from `codec_config` and leaves
    its weights randomly initialised unless they are loaded separately.
    """
    hf_state = {}
    for name, tensor in state_dict.items():
        heads = _heads(name, tensor, args)
        hf_state[hf_name(name)] = tensor if heads is None else _interleaved_to_half(tensor, heads)
    k = args.audio_num_codebooks
    config = {
        "architectures": ["CsmForConditionalGeneration"],
        "model_type": "csm",
        **_transformer_config(args.backbone, args.backbone.max_seq_len),
        "num_codebooks": k,
        "vocab_size": args.audio_vocab_size,
        "text_vocab_size": args.text_vocab_size,
        "tie_codebooks_embeddings": True,
        # Token ids of the Llama-3 tokenizer and Mimi that transformers' processor and generate use.
        "bos_token_id": 128000,
        "pad_token_id": 128002,
        "audio_token_id": 128002,
        "audio_eos_token_id": 128003,
        "codebook_pad_token_id": args.audio_vocab_size - 1,
        "codebook_eos_token_id": 0,
        "depth_decoder_config": {
            "model_type": "csm_depth_decoder_model",
            # The decoder sees positions 0..K-1; transformers' csm-1b config allows K + 1.
            **_transformer_config(args.decoder, k + 1),
            "num_codebooks": k,
            "backbone_hidden_size": args.backbone.embed_dim,
            "vocab_size": args.audio_vocab_size,
        },
        "codec_config": {"model_type": "mimi", "num_quantizers": k},
    }
    return hf_state, config


def _find_flavor(part: str, cfg: dict, defaults: dict, backbone: bool) -> str:
    values = {**defaults, **{key: cfg[key] for key in defaults if key in cfg}}
    for key, value in values.items():
        if key != "rope_scaling" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise CheckpointError(f"{part}: {key}: expected a positive number, got {type(value).__name__} {value!r}")
    if not isinstance(values["rope_scaling"], (dict, type(None))):
        raise CheckpointError(f"{part}: rope_scaling: expected an object, got {values['rope_scaling']!r}")
    if cfg.get("hidden_act", "silu") != "silu" or cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise CheckpointError(f"{part}: only silu MLPs without biases are CSM (got {cfg})")
    head_dim = cfg.get("head_dim") or values["hidden_size"] // values["num_attention_heads"]
    rope = values["rope_scaling"] or {}
    if rope.get("rope_type", rope.get("type")) != "llama3" or not {
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
    } <= set(rope):
        raise CheckpointError(
            f"{part}: rope_scaling must be Llama-3 scaling ('rope_type': 'llama3' with factor, low_freq_factor, "
            f"high_freq_factor, original_max_position_embeddings), got {rope}"
        )
    for name, flavor in FLAVORS.items():
        matches = (
            flavor.num_layers == values["num_hidden_layers"]
            and flavor.num_heads == values["num_attention_heads"]
            and flavor.num_kv_heads == values["num_key_value_heads"]
            and flavor.embed_dim == values["hidden_size"]
            and flavor.head_dim == head_dim
            and flavor.intermediate_dim == values["intermediate_size"]
            and flavor.norm_eps == values["rms_norm_eps"]
            and flavor.rope_base == values["rope_theta"]
            and flavor.rope_scale_factor == rope["factor"]
            and math.isclose(
                flavor.rope_old_context_len / flavor.rope_low_freq_factor,
                rope["original_max_position_embeddings"] / rope["low_freq_factor"],
            )
            and math.isclose(
                flavor.rope_old_context_len / flavor.rope_high_freq_factor,
                rope["original_max_position_embeddings"] / rope["high_freq_factor"],
            )
            # The decoder only ever sees K positions, so its table length does not name a flavor.
            and (not backbone or flavor.max_seq_len == values["max_position_embeddings"])
        )
        if matches:
            return name
    shape = {key: values[key] for key in defaults if key != "rope_scaling"}
    raise CheckpointError(
        f"{part}: no known transformer flavor has {shape}, rope_scaling {rope}; known: {sorted(FLAVORS)}"
    )


def from_transformers(
    hf_state_dict: dict[str, torch.Tensor], hf_config: dict
) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    """transformers state dict + `config.json` contents -> original state dict + config.

    Names this layout does not know are kept as they are, so that loading reports them as unexpected.
    """
    if hf_config.get("model_type") != "csm":
        raise CheckpointError(f"model_type is {hf_config.get('model_type')!r}, expected 'csm'")
    decoder_cfg = hf_config.get("depth_decoder_config") or {}
    if not isinstance(decoder_cfg, dict):
        raise CheckpointError(f"depth_decoder_config: expected an object, got {type(decoder_cfg).__name__}")
    try:
        args = ModelArgs(
            backbone_flavor=_find_flavor("backbone config", hf_config, _BACKBONE_DEFAULTS, backbone=True),
            decoder_flavor=_find_flavor("depth_decoder_config", decoder_cfg, _DECODER_DEFAULTS, backbone=False),
            text_vocab_size=hf_config.get("text_vocab_size", 128_256),
            audio_vocab_size=hf_config.get("vocab_size", 2051),
            audio_num_codebooks=hf_config.get("num_codebooks", 32),
        )
    except ValueError as e:  # named by ModelArgs' field, which the transformers key maps to
        raise CheckpointError(f"invalid model config: {e}") from None
    state: dict[str, torch.Tensor] = {}
    for hf, tensor in hf_state_dict.items():
        if hf.startswith(_CODEC_PREFIX):
            continue
        name = _original_name(hf) or hf
        if name == "audio_embeddings.weight" and name in state:
            if not torch.equal(state[name], tensor):
                raise CheckpointError(
                    f"{_BACKBONE_AUDIO_EMBEDDINGS} and {_TOP_NAMES[name]} differ; CSM shares one audio embedding table"
                )
            continue
        heads = _heads(name, tensor, args) if name != hf else None
        state[name] = tensor if heads is None else _half_to_interleaved(tensor, heads)
    return state, args
