"""A Llama-3 transformer with the original CSM parameter names.

Only the layers and the final norm: CSM's transformers have no token embedding and no output head.
Names follow the original checkpoint (`attn.q_proj`, `mlp.w1`, `sa_norm.scale`, ...), so that
`CSM.load_state_dict(original, strict=True)` works without renaming.
"""

from __future__ import annotations

import math
from functools import lru_cache

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from csm_adapt.model.config import TransformerFlavor


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as the reference does, whatever the autocast dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.scale.float()).type_as(x)


def rope_frequencies(flavor: TransformerFlavor) -> torch.Tensor:
    """Per-pair rotation frequencies with Llama-3 scaling (torchtune's Llama3ScaledRoPE)."""
    dim = flavor.head_dim
    freqs = 1.0 / (flavor.rope_base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    low_wavelen = flavor.rope_old_context_len / flavor.rope_low_freq_factor
    high_wavelen = flavor.rope_old_context_len / flavor.rope_high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (flavor.rope_old_context_len / wavelen - flavor.rope_low_freq_factor) / (
        flavor.rope_high_freq_factor - flavor.rope_low_freq_factor
    )
    blended = (1 - smooth) * freqs / flavor.rope_scale_factor + smooth * freqs
    scaled = torch.where(wavelen < high_wavelen, freqs, blended)
    scaled = torch.where(wavelen > low_wavelen, freqs / flavor.rope_scale_factor, scaled)
    return scaled.float()


@torch.compiler.disable  # a cached lookup, not graph material
@lru_cache(maxsize=16)
def _rope_table(flavor: TransformerFlavor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device instead of stored as a buffer: rotary tables must never reach a checkpoint.
    angles = torch.outer(torch.arange(flavor.max_seq_len, dtype=torch.float32), rope_frequencies(flavor))
    return angles.cos().to(device), angles.sin().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved RoPE: rotates the pairs (x[2i], x[2i+1]). x: [B, S, H, D]; cos/sin: [B, S, D/2]."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    out = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1)
    return out.flatten(-2).type_as(x)


class KVCache:
    """Keys and values of past positions for generation; plain tensors, never in a state dict."""

    def __init__(self, batch: int, num_kv_heads: int, max_len: int, head_dim: int, device, dtype):
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache overflow: position {end} > cache length {self.k.shape[2]}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


@attrs.frozen
class Segments:
    """Packed samples regrouped for attention: grid cell [n, j] is row `index[n, j]` of the flattened
    [B*S] sequence, each sample left-aligned in its grid row; cells past a sample's end hold B*S.

    Attention then runs on a batch of one sample per grid row with a plain causal mask: cost in
    sum(len^2) instead of S^2 per packed sequence, no dense mask, and the kernels that need
    `is_causal` (flash) stay usable. A padding tail is a sample of its own (short: packing fills
    the sequences). Built from CPU `doc_ids`, nothing here syncs with the device.
    """

    index: torch.Tensor  # [N, L] long

    @classmethod
    @torch.compiler.disable  # data-dependent shapes from CPU ids: built outside any compiled graph
    def from_doc_ids(cls, doc_ids: torch.Tensor) -> Segments:
        """doc_ids: [B, S] sample ids, each sample one contiguous run of its row."""
        b, s = doc_ids.shape
        starts = torch.ones(b, s, dtype=torch.bool, device=doc_ids.device)
        starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
        first = starts.reshape(-1).nonzero().squeeze(1)
        lengths = torch.diff(first, append=torch.tensor([b * s], device=first.device))
        offsets = torch.arange(int(lengths.max()), device=first.device)
        return cls(torch.where(offsets[None] < lengths[:, None], first[:, None] + offsets[None], b * s))

    def to(self, device: torch.device) -> Segments:
        return Segments(self.index.to(device, non_blocking=True))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, ...] -> [N, L, ...]; cells past a sample's end repeat its last row (never attended)."""
        return x.flatten(0, 1)[self.index.clamp(max=x.shape[0] * x.shape[1] - 1)]

    def scatter(self, y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """[N, L, ...] -> [B, S, ...]: every row comes from its one cell; the others go to a spare row."""
        rows = shape[0] * shape[1]
        out = y.new_empty(rows + 1, *y.shape[2:])
        out[self.index] = y
        return out[:rows].view(*shape[:2], *y.shape[2:])


class Attention(nn.Module):
    def __init__(self, flavor: TransformerFlavor):
        super().__init__()
        self.num_heads = flavor.num_heads
        self.num_kv_heads = flavor.num_kv_heads
        self.head_dim = flavor.head_dim
        d = flavor.embed_dim
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.output_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, mask: torch.Tensor | Segments | None, cache_start: int | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = apply_rope(self.q_proj(x).view(b, s, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        if isinstance(mask, Segments):
            out = self._attend(*(mask.gather(t) for t in (q, k, v)), None, None)
            return self.output_proj(mask.scatter(out, x.shape).reshape(b, s, -1))
        return self.output_proj(self._attend(q, k, v, mask, cache_start).reshape(b, s, -1))

    def _attend(self, q, k, v, mask: torch.Tensor | None, cache_start: int | None) -> torch.Tensor:
        """[B, S, H, D] in and out."""
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache_start is not None:
            assert self.kv_cache is not None, "call setup_cache() before decoding with a cache"
            k, v = self.kv_cache.update(cache_start, k, v)
        # Without a mask: causal over a full sequence, or one new query that sees the whole cache.
        causal = mask is None and q.shape[2] > 1
        assert not causal or q.shape[2] == k.shape[2], "pass a mask when appending several rows to a cache"
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.num_heads != self.num_kv_heads
        )
        return out.transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, flavor: TransformerFlavor):
        super().__init__()
        self.w1 = nn.Linear(flavor.embed_dim, flavor.intermediate_dim, bias=False)  # gate
        self.w2 = nn.Linear(flavor.intermediate_dim, flavor.embed_dim, bias=False)  # down
        self.w3 = nn.Linear(flavor.embed_dim, flavor.intermediate_dim, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerLayer(nn.Module):
    def __init__(self, flavor: TransformerFlavor):
        super().__init__()
        self.sa_norm = RMSNorm(flavor.embed_dim, flavor.norm_eps)
        self.attn = Attention(flavor)
        self.mlp_norm = RMSNorm(flavor.embed_dim, flavor.norm_eps)
        self.mlp = MLP(flavor)

    def forward(self, x, cos, sin, mask, cache_start):
        x = x + self.attn(self.sa_norm(x), cos, sin, mask, cache_start)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Layers + final norm. `mask`: None for causal, `Segments` for packed samples, or a boolean
    [B, 1, S, L] (True = may attend) for anything else (generation with padded prompts)."""

    def __init__(self, flavor: TransformerFlavor):
        super().__init__()
        self.flavor = flavor
        self.layers = nn.ModuleList(TransformerLayer(flavor) for _ in range(flavor.num_layers))
        self.norm = RMSNorm(flavor.embed_dim, flavor.norm_eps)
        self.checkpoint_layers = False

    def setup_cache(self, batch: int, max_len: int, device, dtype) -> None:
        f = self.flavor
        for layer in self.layers:
            layer.attn.kv_cache = KVCache(batch, f.num_kv_heads, max_len, f.head_dim, device, dtype)

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attn.kv_cache = None

    def forward(
        self,
        x: torch.Tensor,
        input_pos: torch.Tensor,
        mask: torch.Tensor | Segments | None = None,
        cache_start: int | None = None,
    ) -> torch.Tensor:
        cos_table, sin_table = _rope_table(self.flavor, x.device)
        cos, sin = cos_table[input_pos], sin_table[input_pos]
        for layer in self.layers:
            if self.checkpoint_layers and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache_start, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache_start)
        return self.norm(x)
