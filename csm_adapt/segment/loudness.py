"""Loudness normalisation to a target in LUFS (ITU-R BS.1770, as torchaudio measures it)."""

from __future__ import annotations

import math

import torch
import torchaudio.functional

PEAK_CEILING_DB = -1.0  # the gain is lowered when it would push a peak above this (dBFS)


def normalize_loudness(wav: torch.Tensor, sample_rate: int, target_lufs: float) -> torch.Tensor:
    """`wav` (1-D) scaled to `target_lufs` integrated loudness, peaks kept under -1 dBFS.

    A clip too short or too quiet to measure (under 400 ms, or gated to nothing) is returned as is.
    """
    if wav.numel() < int(0.4 * sample_rate):
        return wav
    measured = torchaudio.functional.loudness(wav.unsqueeze(0).float(), sample_rate).item()
    if not math.isfinite(measured):
        return wav
    gain_db = target_lufs - measured
    peak = wav.abs().max().item()
    if peak > 0:
        gain_db = min(gain_db, PEAK_CEILING_DB - 20 * math.log10(peak))
    return wav * 10 ** (gain_db / 20)
