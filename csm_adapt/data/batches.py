"""One prepared sample -> rows, and packed row sequences -> a padded training `Batch`.

A packed sequence holds several samples back to back; each keeps its own positions (restarting at
0) and its own doc id, so the model (which attends within each doc id: `llama.Segments`) lets no
sample see another. The padding tail gets a doc id of its own: a short sample of its own that
nothing else attends to.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import torch

from csm_adapt.data import format as fmt
from csm_adapt.model.rows import audio_rows, text_rows


@attrs.frozen
class SampleRows:
    tokens: torch.Tensor  # [R, K+1] long
    mask: torch.Tensor  # [R, K+1] bool
    target_mask: torch.Tensor  # [R] bool

    def __len__(self) -> int:
        return self.tokens.shape[0]


def sample_rows(codes: np.ndarray, text: np.ndarray, meta: dict) -> SampleRows:
    """Rows of one prepared sample (docs/data-format.md): per turn, its text rows, audio rows and EOS frame.

    codes [K, F] and text [T] hold all turns concatenated; meta["turns"] says where each turn ends.
    Targets: the audio rows and EOS frame of turns with target=True; context turns are only read.
    Raises ValueError when the arrays and the turn lengths disagree (the caller names the shard).
    """
    turns = meta[fmt.META_TURNS]
    text_tokens = sum(t[fmt.TURN_TEXT_TOKENS] for t in turns)
    frames = sum(t[fmt.TURN_FRAMES] for t in turns)
    if text_tokens != len(text) or frames != codes.shape[1]:
        raise ValueError(
            f"turn lengths (text {text_tokens}, frames {frames})"
            f" do not match the arrays (text {len(text)}, frames {codes.shape[1]})"
        )
    codes_t, text_t = torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(text.astype(np.int64))
    tokens, masks, targets = [], [], []
    t0 = f0 = 0
    for turn in turns:
        nt, nf = turn[fmt.TURN_TEXT_TOKENS], turn[fmt.TURN_FRAMES]
        tt, tm = text_rows(text_t[t0 : t0 + nt].tolist(), codes.shape[0])
        at, am = audio_rows(codes_t[:, f0 : f0 + nf])
        tokens += [tt, at]
        masks += [tm, am]
        targets += [torch.zeros(nt, dtype=torch.bool), torch.full((nf + 1,), bool(turn[fmt.TURN_TARGET]))]
        t0, f0 = t0 + nt, f0 + nf
    target_mask = torch.cat(targets)
    target_mask[0] = False  # row 0 has no previous state to predict it from
    return SampleRows(torch.cat(tokens), torch.cat(masks), target_mask)


@attrs.frozen
class Batch:
    """B packed sequences padded to S rows. Counts are of real (non-padding) content."""

    tokens: torch.Tensor  # [B, S, K+1] long
    mask: torch.Tensor  # [B, S, K+1] bool
    target_mask: torch.Tensor  # [B, S] bool
    input_pos: torch.Tensor  # [B, S] long, restarting at 0 for each sample
    doc_ids: torch.Tensor  # [B, S] long, distinct per sample within a sequence
    sample_ids: tuple[str, ...]
    num_rows: int
    num_frames: int  # target frames: what the loss is averaged over

    @property
    def num_samples(self) -> int:
        return len(self.sample_ids)

    def _map(self, fn) -> Batch:
        tensors = {f: fn(getattr(self, f)) for f in ("tokens", "mask", "target_mask", "input_pos", "doc_ids")}
        return attrs.evolve(self, **tensors)

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True), so `.to(device)` can copy asynchronously."""
        return self._map(torch.Tensor.pin_memory)

    def to(self, device: torch.device | str) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=True))


def padded_length(rows: int, multiple: int) -> int:
    return -(-rows // multiple) * multiple


def collate(sequences: Sequence[Sequence[SampleRows]], sample_ids: Sequence[str], pad_multiple: int = 1) -> Batch:
    """Packed sequences (each a list of samples) -> Batch with S = longest sequence, rounded up to
    `pad_multiple` so that kernel shapes repeat across steps."""
    lengths = [sum(len(s) for s in seq) for seq in sequences]
    b, s = len(sequences), padded_length(max(lengths), pad_multiple)
    width = sequences[0][0].tokens.shape[1]
    tokens = torch.zeros(b, s, width, dtype=torch.long)
    mask = torch.zeros(b, s, width, dtype=torch.bool)
    target_mask = torch.zeros(b, s, dtype=torch.bool)
    input_pos = torch.zeros(b, s, dtype=torch.long)
    doc_ids = torch.zeros(b, s, dtype=torch.long)
    for i, seq in enumerate(sequences):
        start = 0
        for doc, sample in enumerate([*seq, None]):
            n = len(sample) if sample is not None else s - start  # None: the padding tail
            end = start + n
            if sample is not None:
                tokens[i, start:end], mask[i, start:end] = sample.tokens, sample.mask
                target_mask[i, start:end] = sample.target_mask
            input_pos[i, start:end] = torch.arange(n)
            doc_ids[i, start:end] = doc
            start = end
    return Batch(
        tokens=tokens,
        mask=mask,
        target_mask=target_mask,
        input_pos=input_pos,
        doc_ids=doc_ids,
        sample_ids=tuple(sample_ids),
        num_rows=sum(lengths),
        num_frames=int(target_mask.sum()),
    )
