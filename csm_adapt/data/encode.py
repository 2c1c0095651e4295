"""Turning one shard's samples into prepared samples: decode, check, tokenize, split, encode.

Audio is decoded (and resampled, on the codec's device) sample by sample in reading order, then
encoded by Mimi several clips per call: a window of decoded clips is sorted by length and cut into
batches of at most `batch_seconds` of padded audio, so little compute goes to padding. Batches never
cross shards, so a shard's codes depend on its samples only (what resuming needs).

A sample with a bad clip or text is rejected whole, with a reason; a sample longer than `max_rows`
is split at turn boundaries, and a single turn over the limit rejects it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import attrs
import numpy as np
import torch

from csm_adapt.audio_io import is_silent, load_audio
from csm_adapt.data import format as fmt
from csm_adapt.data.shard_writer import PreparedSample
from csm_adapt.errors import AudioError
from csm_adapt.model.audio_codec import AudioCodec
from csm_adapt.model.text_tokenizer import TextTokenizer, normalize_text
from csm_adapt.plugin_api import Sample, Turn

# Clips decoded ahead of encoding, as a multiple of one batch: more sorts better, costs memory.
_WINDOW_BATCHES = 4


@attrs.frozen
class Reject:
    id: str
    source: str
    audio: str
    reason: str  # short code the summary counts by
    detail: str  # the full message

    def to_json(self) -> dict:
        return attrs.asdict(self)


@attrs.frozen
class Frontend:
    tokenizer: TextTokenizer
    codec: AudioCodec


@attrs.define
class _Clip:
    """One decoded turn; `codes` is filled in by the encoder."""

    turn: Turn
    tokens: list[int]
    wav: torch.Tensor | None
    frames: int
    seconds: float
    codes: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return fmt.turn_rows(len(self.tokens), self.frames)


@attrs.define
class ShardResult:
    samples: list[PreparedSample] = attrs.field(factory=list)
    rejects: list[Reject] = attrs.field(factory=list)
    clips: int = 0  # audio clips (turns) encoded
    seconds: float = 0.0  # their audio
    elapsed: float = 0.0  # processing seconds


def encode_shard(
    samples: Sequence[Sample],
    frontend: Frontend,
    *,
    max_rows: int,
    batch_seconds: float,
    min_seconds: float = 0.0,
    advance: Callable[[float], None] = lambda n: None,
) -> ShardResult:
    """Prepared samples and rejects of `samples`, in reading order.

    `advance(n)` reports progress in samples, as it happens: half a sample when it is decoded, the
    other half as its clips' encode batches finish (a rejected sample counts whole at once).
    """
    started = time.perf_counter()
    result = ShardResult()
    pending: list[tuple[str, Sample, list[_Clip]]] = []  # pieces waiting for their codes
    pending_samples = 0
    for sample in samples:
        pieces, reject = _decode(sample, frontend, max_rows, min_seconds)
        if reject is not None:
            result.rejects.append(reject)
            advance(1)
            continue
        advance(0.5)
        for piece_id, clips in pieces:
            if not any(clip.turn.target for clip in clips):
                detail = f"{sample.source}: {piece_id} has no target turn (nothing to train on)"
                result.rejects.append(
                    Reject(piece_id, sample.source, str(clips[0].turn.audio), "no target turn", detail)
                )
            else:
                pending.append((piece_id, sample, clips))
        pending_samples += 1
        if sum(clip.seconds for _, _, clips in pending for clip in clips) >= _WINDOW_BATCHES * batch_seconds:
            _flush(pending, frontend.codec, batch_seconds, result, advance, pending_samples / 2)
            pending_samples = 0
    _flush(pending, frontend.codec, batch_seconds, result, advance, pending_samples / 2)
    result.elapsed = time.perf_counter() - started
    return result


def _decode(
    sample: Sample, frontend: Frontend, max_rows: int, min_seconds: float = 0.0
) -> tuple[list[tuple[str, list[_Clip]]], Reject | None]:
    """The sample's pieces (id, decoded turns), or why it is rejected."""
    clips = []
    for turn in sample.turns:
        if not normalize_text(turn.text):
            return [], _reject(sample, turn, "empty text", f"empty text for {turn.audio}")
        try:
            wav = load_audio(turn.audio, start=turn.start, end=turn.end, device=frontend.codec.device)
        except AudioError as e:
            return [], _reject(sample, turn, e.reason, str(e))
        if is_silent(wav):
            return [], _reject(sample, turn, "silent", f"{turn.audio}: silent (peak below -60 dBFS)")
        seconds = wav.shape[-1] / frontend.codec.sample_rate
        if seconds < min_seconds:
            detail = f"{turn.audio}: {seconds:.3f} s, shorter than data.min_clip_seconds={min_seconds:g}"
            return [], _reject(sample, turn, "too short", detail)
        tokens = frontend.tokenizer.encode(turn.text, turn.speaker)
        frames = math.ceil(wav.shape[-1] / frontend.codec.samples_per_frame)
        clip = _Clip(turn, tokens, wav, frames, wav.shape[-1] / frontend.codec.sample_rate)
        if clip.rows > max_rows:
            detail = f"{turn.audio}: {clip.rows} rows, over max_rows={max_rows}"
            return [], _reject(sample, turn, "too long", detail)
        clips.append(clip)
    pieces = _split(clips, max_rows)
    if len(pieces) == 1:
        return [(sample.id, pieces[0])], None
    return [(f"{sample.id}-part{i}", piece) for i, piece in enumerate(pieces)], None


def _reject(sample: Sample, turn: Turn, reason: str, detail: str) -> Reject:
    return Reject(sample.id, sample.source, str(turn.audio), reason, f"{sample.source}: {detail}")


def _split(clips: list[_Clip], max_rows: int) -> list[list[_Clip]]:
    """Consecutive turns grouped greedily into pieces of at most `max_rows` rows."""
    pieces, rows = [[]], 0
    for clip in clips:
        if pieces[-1] and rows + clip.rows > max_rows:
            pieces.append([])
            rows = 0
        pieces[-1].append(clip)
        rows += clip.rows
    return pieces


def _flush(
    pending: list,
    codec: AudioCodec,
    batch_seconds: float,
    result: ShardResult,
    advance: Callable[[float], None],
    work: float,
) -> None:
    """Encode every pending clip, then turn the pending pieces into prepared samples, in order.

    `advance` gets each encode batch's share of `work` (progress units) once the batch is encoded."""
    clips = [clip for _, _, piece in pending for clip in piece]
    for batch in _batches(clips, batch_seconds):
        for clip, codes in zip(batch, codec.encode([clip.wav for clip in batch])):
            clip.codes, clip.wav = codes, None  # free the audio as soon as it is encoded
        advance(work * len(batch) / len(clips))
    for piece_id, sample, piece in pending:
        result.samples.append(_prepared(piece_id, sample, piece))
    result.clips += len(clips)
    result.seconds += sum(clip.seconds for clip in clips)
    pending.clear()


def _batches(clips: list[_Clip], batch_seconds: float) -> list[list[_Clip]]:
    """Clips by length, cut so that (clips in a batch) x (its longest clip) <= batch_seconds."""
    batches: list[list[_Clip]] = []
    for clip in sorted(clips, key=lambda c: c.seconds):
        # Sorted ascending, so the clip being added is the batch's longest.
        if batches and (len(batches[-1]) + 1) * clip.seconds <= batch_seconds:
            batches[-1].append(clip)
        else:
            batches.append([clip])
    return batches


def _prepared(piece_id: str, sample: Sample, clips: list[_Clip]) -> PreparedSample:
    turns = [
        {
            fmt.TURN_SPEAKER: clip.turn.speaker,
            fmt.TURN_TEXT: clip.turn.text,
            fmt.TURN_TEXT_TOKENS: len(clip.tokens),
            fmt.TURN_FRAMES: clip.frames,
            fmt.TURN_TARGET: clip.turn.target,
            fmt.TURN_AUDIO: str(clip.turn.audio),
            fmt.TURN_START: clip.turn.start,
            fmt.TURN_END: clip.turn.end,
        }
        for clip in clips
    ]
    meta = {
        fmt.META_ID: piece_id,
        fmt.META_SOURCE: sample.source,
        fmt.META_TURNS: turns,
        fmt.META_ROWS: sum(clip.rows for clip in clips),
    }
    codes = np.concatenate([clip.codes.numpy().astype(np.int16) for clip in clips], axis=1)
    text = np.concatenate([np.asarray(clip.tokens, dtype=np.int32) for clip in clips])
    return PreparedSample(piece_id, codes, text, meta)
