"""CSM: a Llama backbone over interleaved text/audio rows plus a depth decoder for codebooks 1..K-1.

Parameter names are those of the original checkpoint (187 tensors for csm-1b). docs/architecture.md
describes the row layout and the objective implemented here.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from csm_adapt.model.config import ModelArgs
from csm_adapt.model.llama import Segments, Transformer


@attrs.frozen
class TrainOutput:
    """What a loss needs. N = scored audio frames, M = frames given to the depth decoder."""

    c0_logits: torch.Tensor  # [N, V]
    c0_targets: torch.Tensor  # [N]
    decoder_logits: torch.Tensor  # [M, K-1, V]
    decoder_targets: torch.Tensor  # [M, K-1]


@torch.compiler.disable  # data-dependent shapes from CPU masks: built outside any compiled graph
def _true_rows(*masks: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Flat indices of the True entries of each mask, copied to `device` without waiting for it."""
    return [m.reshape(-1).nonzero().squeeze(1).to(device, non_blocking=True) for m in masks]


class CSM(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        bb, dec = args.backbone, args.decoder
        self.backbone = Transformer(bb)
        self.decoder = Transformer(dec)
        self.text_embeddings = nn.Embedding(args.text_vocab_size, bb.embed_dim)
        self.audio_embeddings = nn.Embedding(args.audio_vocab_size * args.audio_num_codebooks, bb.embed_dim)
        self.projection = nn.Linear(bb.embed_dim, dec.embed_dim, bias=False)
        self.codebook0_head = nn.Linear(bb.embed_dim, args.audio_vocab_size, bias=False)
        self.audio_head = nn.Parameter(torch.empty(args.audio_num_codebooks - 1, dec.embed_dim, args.audio_vocab_size))

    @property
    def num_codebooks(self) -> int:
        return self.args.audio_num_codebooks

    def init_weights(self, std: float = 0.02) -> None:
        """Llama-style init for training from scratch (tests, the demo); finetuning loads weights."""
        for name, p in self.named_parameters():
            if name.endswith(".scale"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=std)

    def _codebook_offsets(self, k: int, device) -> torch.Tensor:
        return torch.arange(k, device=device) * self.args.audio_vocab_size

    def embed_rows(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, S, K+1] rows -> [B, S, D]: the sum of each row's masked embeddings.

        embedding_bag sums the K audio embeddings without materialising [B, S, K, D].
        """
        k = self.num_codebooks
        b, s, _ = tokens.shape
        text_mask = mask[..., k:].to(self.text_embeddings.weight.dtype)
        text = self.text_embeddings(tokens[..., k] * mask[..., k]) * text_mask
        ids = (tokens[..., :k] + self._codebook_offsets(k, tokens.device)).reshape(b * s, k)
        weights = mask[..., :k].reshape(b * s, k).to(self.audio_embeddings.weight.dtype)
        audio = F.embedding_bag(ids, self.audio_embeddings.weight, per_sample_weights=weights, mode="sum")
        return text + audio.view(b, s, -1)

    def decoder_logits(self, h_prev: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced depth decoder. h_prev: [M, D] (state at t-1), codes: [M, K] (frame t).

        Input rows [h_{t-1}, emb(c0), ..., emb(c_{K-2})] at positions 0..K-1; output row i predicts
        codebook i through audio_head[i-1]. Returns [M, K-1, V].
        """
        k = self.num_codebooks
        embeds = self.audio_embeddings(codes[:, : k - 1] + self._codebook_offsets(k - 1, codes.device))
        x = self.projection(torch.cat([h_prev.unsqueeze(1), embeds], dim=1))
        pos = torch.arange(k, device=x.device).expand(x.shape[0], k)
        y = self.decoder(x, pos)
        return torch.einsum("mkd,kdv->mkv", y[:, 1:], self.audio_head.to(y.dtype))

    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        target_mask: torch.Tensor,
        *,
        input_pos: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        decoder_mask: torch.Tensor | None = None,
    ) -> TrainOutput:
        """Training forward over a batch of rows.

        tokens/mask: [B, S, K+1]. target_mask: [B, S] audio frames to score (row 0 never is: it has
        no previous state). input_pos/doc_ids: [B, S] per-sample positions and sample ids when several
        samples are packed in one row sequence (no attention across samples); None = one sample per row.
        decoder_mask: [B, S] subset of target_mask given to the depth decoder (None = all targets).

        target_mask, doc_ids and decoder_mask only define indices: they may stay on the CPU while
        tokens are on an accelerator, and then no device-to-host sync happens here.
        """
        b, s, _ = tokens.shape
        device = tokens.device
        if input_pos is None:
            input_pos = torch.arange(s, device=device).expand(b, s)
        attn = None if doc_ids is None else Segments.from_doc_ids(doc_ids).to(device)
        h = self.backbone(self.embed_rows(tokens, mask), input_pos, attn)

        # The state at row t-1 predicts frame t.
        h_prev = h[:, :-1].reshape(b * (s - 1), -1)
        frames = tokens[:, 1:, : self.num_codebooks].reshape(b * (s - 1), -1)
        targets = target_mask[:, 1:]
        dec = targets if decoder_mask is None else decoder_mask[:, 1:] & targets
        target_rows, dec_rows = _true_rows(targets, dec, device=device)
        dec_codes = frames[dec_rows]
        return TrainOutput(
            c0_logits=self.codebook0_head(h_prev[target_rows]),
            c0_targets=frames[target_rows][:, 0],
            decoder_logits=self.decoder_logits(h_prev[dec_rows], dec_codes),
            decoder_targets=dec_codes[:, 1:],
        )
