"""Frame-by-frame generation (docs/architecture.md, "Generation"), batched over several prompts.

Prompts of different lengths are left-padded: pad slots are masked out of attention and every
sample keeps its own positions, so a batched prompt gives the same frames as the prompt alone.
"""

from __future__ import annotations

import torch

from csm_adapt.errors import GenerationError
from csm_adapt.model.csm import CSM

FRAME_MS = 80  # Mimi: 12.5 frames per second


def sample_topk(logits: torch.Tensor, topk: int, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """[B, V] -> [B, 1]: keep the top-k logits at `temperature`, sample (top-k 1 is greedy)."""
    logits = logits.float() / temperature
    kth = torch.topk(logits, min(topk, logits.shape[-1])).values[..., -1:]
    probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
    # Exponential-race sampling: no host sync, and it takes a torch.Generator for reproducibility.
    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / noise, dim=-1, keepdim=True)


def _sample_frame(model: CSM, last_h: torch.Tensor, topk: int, temperature: float, gen) -> torch.Tensor:
    """One audio frame [B, K] from the backbone state: c0 from its head, c1.. from the depth decoder."""
    k = model.num_codebooks
    samples = [sample_topk(model.codebook0_head(last_h), topk, temperature, gen)]
    x = torch.cat([last_h.unsqueeze(1), model.audio_embeddings(samples[0])], dim=1)
    pos = torch.arange(2, device=last_h.device).expand(last_h.shape[0], 2)
    for i in range(1, k):
        # The decoder cache restarts with each frame: positions 0.. are [h, c0], then one code a step.
        y = model.decoder(model.projection(x), pos, cache_start=0 if i == 1 else i)
        logits = y[:, -1] @ model.audio_head[i - 1].to(y.dtype)
        samples.append(sample_topk(logits, topk, temperature, gen))
        x = model.audio_embeddings(samples[-1] + i * model.args.audio_vocab_size)
        pos = pos[:, -1:] + 1
    return torch.cat(samples, dim=1)


@torch.inference_mode()
def generate_frames(
    model: CSM,
    prompts: list[tuple[torch.Tensor, torch.Tensor]],
    max_frames: int,
    *,
    temperature: float = 0.9,
    topk: int = 50,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Generate audio frames after each prompt (rows, masks: [S_i, K+1]) until an all-zero frame.

    Returns one LongTensor [K, frames] per prompt, the EOS frame excluded.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    k = model.num_codebooks
    lengths = [p[0].shape[0] for p in prompts]
    b, longest = len(prompts), max(lengths)
    max_seq_len = model.args.backbone.max_seq_len
    if longest + max_frames > max_seq_len:
        raise GenerationError(
            f"the prompt takes {longest} rows, which leaves no room for {max_frames} frames within "
            f"{max_seq_len} rows; use shorter context or a smaller max audio length"
        )

    tokens = torch.zeros(b, longest, k + 1, dtype=torch.long, device=device)
    mask = torch.zeros(b, longest, k + 1, dtype=torch.bool, device=device)
    pos = torch.zeros(b, longest, dtype=torch.long, device=device)
    valid = torch.zeros(b, longest + max_frames, dtype=torch.bool, device=device)
    for i, ((t, m), n) in enumerate(zip(prompts, lengths)):
        tokens[i, longest - n :], mask[i, longest - n :] = t.to(device), m.to(device)
        pos[i, longest - n :] = torch.arange(n, device=device)
        valid[i, longest - n : longest] = True

    model.backbone.setup_cache(b, longest + max_frames, device, dtype)
    model.decoder.setup_cache(b, k, device, dtype)
    try:
        # Pad rows attend only to themselves so that no row is fully masked (that would give NaN).
        causal = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
        eye = torch.eye(longest, dtype=torch.bool, device=device)
        attn = ((valid[:, None, :longest] & causal) | eye).unsqueeze(1)
        h = model.backbone(model.embed_rows(tokens, mask), pos, attn, cache_start=0)
        last_h, cur_pos = h[:, -1], pos[:, -1:]

        frames: list[torch.Tensor] = []
        done = torch.zeros(b, dtype=torch.bool, device=device)
        ends = torch.full((b,), max_frames, dtype=torch.long, device=device)
        for step in range(max_frames):
            frame = _sample_frame(model, last_h, topk, temperature, generator)
            is_eos = (frame == 0).all(dim=1)
            ends = torch.where(is_eos & ~done, step, ends)
            done |= is_eos
            if bool(done.all()):
                break
            frames.append(frame)
            slot = longest + step
            valid[:, slot] = True
            row = torch.cat([frame, torch.zeros(b, 1, dtype=torch.long, device=device)], dim=1).unsqueeze(1)
            row_mask = torch.ones_like(row, dtype=torch.bool)
            row_mask[..., -1] = False
            cur_pos = cur_pos + 1
            h = model.backbone(model.embed_rows(row, row_mask), cur_pos, valid[:, None, None, : slot + 1], slot)
            last_h = h[:, -1]
    finally:
        model.backbone.clear_cache()
        model.decoder.clear_cache()

    stacked = torch.stack(frames, dim=2) if frames else torch.zeros(b, k, 0, dtype=torch.long, device=device)
    return [stacked[i, :, : int(ends[i])].cpu() for i in range(b)]
