"""The row layout: every sequence position is a row of K audio columns and one text column.

A text row carries a token in the last column; an audio row carries one code per codebook; each
utterance's audio ends with an all-zero EOS frame. Generation and training build rows only here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def text_rows(ids: Sequence[int], num_codebooks: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(ids)
    tokens = torch.zeros(n, num_codebooks + 1, dtype=torch.long)
    mask = torch.zeros(n, num_codebooks + 1, dtype=torch.bool)
    tokens[:, -1] = torch.as_tensor(list(ids), dtype=torch.long)
    mask[:, -1] = True
    return tokens, mask


def audio_rows(codes: torch.Tensor, eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """codes: [K, frames] -> rows, with the all-zero EOS frame appended when `eos`."""
    k, frames = codes.shape
    n = frames + int(eos)
    tokens = torch.zeros(n, k + 1, dtype=torch.long)
    mask = torch.zeros(n, k + 1, dtype=torch.bool)
    tokens[:frames, :k] = codes.t().long()
    mask[:, :k] = True
    return tokens, mask


def utterance_rows(text_ids: Sequence[int], codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[spk]text` rows, then its audio rows and the EOS frame."""
    t_tok, t_mask = text_rows(text_ids, codes.shape[0])
    a_tok, a_mask = audio_rows(codes)
    return torch.cat([t_tok, a_tok]), torch.cat([t_mask, a_mask])


def audio_frame_mask(mask: torch.Tensor) -> torch.Tensor:
    """[..., K+1] row masks -> [...] True where the row is an audio frame."""
    return mask[..., :-1].any(-1)
