"""Transcribing clips with Whisper through transformers (`pip install 'csm-adapt[whisper]'`)."""

from __future__ import annotations

import torch
import torchaudio.functional

from csm_adapt.audio_io import SAMPLE_RATE
from csm_adapt.errors import CsmAdaptError

WHISPER_RATE = 16_000


class Transcriber:
    """`transcriber(clip at SAMPLE_RATE) -> (text, words or None)`; words are
    `{"word", "start", "end"}` in seconds from the clip's start, when `word_timestamps`."""

    def __init__(self, model: str, language: str | None, word_timestamps: bool, device: str = "cpu"):
        try:
            from transformers import pipeline
        except ImportError:
            raise CsmAdaptError("transcribing needs transformers: pip install 'csm-adapt[whisper]'") from None
        try:
            self.pipe = pipeline("automatic-speech-recognition", model=model, device=torch.device(device))
        except (OSError, ValueError) as e:
            raise CsmAdaptError(f"cannot load the Whisper model {model!r}: {e}") from None
        self.word_timestamps = word_timestamps
        self.generate_kwargs = {"task": "transcribe"} | ({"language": language} if language else {})

    def __call__(self, clip: torch.Tensor) -> tuple[str, list[dict] | None]:
        audio = torchaudio.functional.resample(clip.float().cpu(), SAMPLE_RATE, WHISPER_RATE).numpy()
        result = self.pipe(
            {"raw": audio, "sampling_rate": WHISPER_RATE},
            return_timestamps="word" if self.word_timestamps else False,
            generate_kwargs=self.generate_kwargs,
        )
        text = result["text"].strip()
        if not self.word_timestamps:
            return text, None
        words = [
            {"word": chunk["text"].strip(), "start": _time(chunk["timestamp"][0]), "end": _time(chunk["timestamp"][1])}
            for chunk in result.get("chunks", [])
        ]
        return text, words


def _time(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
