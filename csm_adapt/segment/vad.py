"""Voice-activity detection with Silero VAD (the `silero-vad` package ships its model: no download)."""

from __future__ import annotations

import torch

from csm_adapt.errors import CsmAdaptError
from csm_adapt.segment.cuts import Span

VAD_RATE = 16_000  # what Silero VAD runs at


class Vad:
    def __init__(self, *, threshold: float = 0.5, min_pause: float = 0.3, pad: float = 0.1, max_seconds: float):
        try:
            threads = torch.get_num_threads()
            import silero_vad
        except ImportError:
            raise CsmAdaptError("segment needs silero-vad: pip install 'csm-adapt[segment]'") from None
        finally:
            torch.set_num_threads(threads)  # importing silero_vad sets torch to 1 thread, process-wide
        self._silero = silero_vad
        self.model = silero_vad.load_silero_vad()
        self.threshold, self.min_pause, self.pad, self.max_seconds = threshold, min_pause, pad, max_seconds

    def speech(self, wav: torch.Tensor) -> list[Span]:
        """Speech regions of a 1-D clip at `VAD_RATE`, in seconds, each padded by up to `pad` into
        the pauses around it (half the pause when it is shorter than two pads).

        Pauses shorter than `min_pause` do not end a region; a region longer than `max_seconds` is
        split at its longest inner pause (or, with none, at `max_seconds`).
        """
        self.model.reset_states()
        stamps = self._silero.get_speech_timestamps(
            wav.float().cpu(),
            self.model,
            threshold=self.threshold,
            sampling_rate=VAD_RATE,
            min_silence_duration_ms=int(self.min_pause * 1000),
            speech_pad_ms=int(self.pad * 1000),
            max_speech_duration_s=self.max_seconds,
        )
        return [Span(s["start"] / VAD_RATE, s["end"] / VAD_RATE) for s in stamps]
