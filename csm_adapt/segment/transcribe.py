"""Transcribing with Whisper through transformers (`pip install 'csm-adapt[whisper]'`): a clip's text,
or the words of a recording's speech with their times (to cut between words, `csm_adapt.segment.align`)."""

from __future__ import annotations

import torch
import torchaudio.functional

from csm_adapt.audio_io import SAMPLE_RATE
from csm_adapt.errors import CsmAdaptError
from csm_adapt.segment.align import Word
from csm_adapt.segment.cuts import Span

WHISPER_RATE = 16_000


class Transcriber:
    def __init__(self, model: str, language: str | None, device: str = "cpu"):
        try:
            from transformers import pipeline
        except ImportError:
            raise CsmAdaptError("transcribing needs transformers: pip install 'csm-adapt[whisper]'") from None
        try:
            self.pipe = pipeline("automatic-speech-recognition", model=model, device=torch.device(device))
        except (OSError, ValueError) as e:
            raise CsmAdaptError(f"cannot load the Whisper model {model!r}: {e}") from None
        self.generate_kwargs = {"task": "transcribe"} | ({"language": language} if language else {})

    def text(self, clip: torch.Tensor) -> str:
        """The text of a 1-D clip at `SAMPLE_RATE`."""
        return self._run(clip, timestamps=False)["text"].strip()

    def words(self, wav: torch.Tensor, spans: list[Span]) -> list[Word]:
        """The words heard in each of `spans` (seconds) of the 1-D `wav` at `SAMPLE_RATE`, each span
        transcribed on its own; times in seconds from the start of `wav`, each word within its span."""
        words = []
        for span in spans:
            result = self._run(wav[round(span.start * SAMPLE_RATE) : round(span.end * SAMPLE_RATE)], timestamps="word")
            reach = 0.0  # Whisper leaves a time out (None) at the edge of what it heard
            for chunk in result.get("chunks", []):
                start, end = chunk["timestamp"]
                start = min(max(reach if start is None else float(start), 0.0), span.seconds)
                end = min(max(span.seconds if end is None else float(end), start), span.seconds)
                reach = end
                if chunk["text"].strip():
                    words.append(Word(chunk["text"], span.start + start, span.start + end))
        return words

    def _run(self, clip: torch.Tensor, timestamps: str | bool) -> dict:
        audio = torchaudio.functional.resample(clip.float().cpu(), SAMPLE_RATE, WHISPER_RATE).numpy()
        return self.pipe(
            {"raw": audio, "sampling_rate": WHISPER_RATE},
            return_timestamps=timestamps,
            generate_kwargs=self.generate_kwargs,
        )
