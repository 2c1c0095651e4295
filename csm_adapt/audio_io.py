"""Audio in and out: decode, down-mix to mono, resample; write wav files atomically.

Inside the engine audio is a 1-D float32 torch tensor at `SAMPLE_RATE` (Mimi's rate).
Decoding uses soundfile (bundled libsndfile: WAV, FLAC, Ogg Vorbis, Opus, MP3 with exact,
gapless lengths and partial reads); `torchaudio.load` is avoided because torchaudio 2.9 needs
TorchCodec + FFmpeg for it.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional

from csm_adapt.errors import AudioError
from csm_adapt.plugin_api import AudioSource

SAMPLE_RATE = 24_000

# Metadata timestamps are usually rounded (often to 10 ms), so an `end` that overshoots the
# file's last sample by less than this is read as "to the end" rather than rejected.
_END_TOLERANCE_S = 0.01


def load_audio(
    path: str | os.PathLike | AudioSource,
    *,
    start: float | None = None,
    end: float | None = None,
    sample_rate: int = SAMPLE_RATE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decode `path` (or its `start`..`end` slice, in seconds) to 1-D float32 mono at `sample_rate`.

    `path` may also be an `AudioSource` (audio bytes held by a dataset). Only the requested slice
    is read from disk. Channels are averaged. Resampling runs on
    `device` (e.g. CUDA) when given. Raises `AudioError` naming the file and the reason.
    """
    source: Path | io.BytesIO
    if isinstance(path, AudioSource):
        fetched = path.fetch()
        # Bytes are decoded in memory and named by their source; a path takes the file checks below.
        path, source = (Path(str(path)), io.BytesIO(fetched)) if isinstance(fetched, bytes) else (fetched, fetched)
    else:
        path = source = Path(path)
    if isinstance(source, Path):
        if not path.is_file():
            raise AudioError(f"{path}: file not found", reason="missing")
        if not os.access(path, os.R_OK):
            raise AudioError(f"{path}: permission denied", reason="unreadable")
    try:
        with sf.SoundFile(source) as f:
            file_rate, total = f.samplerate, f.frames
            if total == 0:
                raise AudioError(f"{path}: empty audio (0 samples)", reason="empty audio")
            first, last = _slice_frames(path, start, end, file_rate, total)
            f.seek(first)
            data = f.read(last - first, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AudioError(f"{path}: cannot decode audio ({e.error_string})") from e
    except sf.SoundFileError as e:
        raise AudioError(f"{path}: cannot decode audio ({e})") from e
    if data.shape[0] == 0:
        # A header that promises frames the body does not hold (truncated file).
        raise AudioError(f"{path}: empty audio (0 samples decoded)", reason="empty audio")
    wav = torch.from_numpy(data).to(device).mean(dim=1)
    if not torch.isfinite(wav).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    if file_rate != sample_rate:
        wav = torchaudio.functional.resample(wav, orig_freq=file_rate, new_freq=sample_rate)
    return wav


def _slice_frames(path: Path, start: float | None, end: float | None, rate: int, total: int) -> tuple[int, int]:
    """Frame range [first, last) for a start/end slice in seconds, validated against the file."""
    duration = total / rate
    if start is not None and not (math.isfinite(start) and start >= 0):
        raise AudioError(f"{path}: start={start} must be a finite time >= 0 s", reason="bad span")
    if end is not None and not math.isfinite(end):
        raise AudioError(f"{path}: end={end} must be a finite time in seconds", reason="bad span")
    if start is not None and end is not None and start >= end:
        raise AudioError(f"{path}: start={start} s must be before end={end} s", reason="bad span")
    if start is not None and start >= duration:
        raise AudioError(f"{path}: start={start} s is beyond the file's duration ({duration:.3f} s)", reason="bad span")
    if end is not None and end > duration + _END_TOLERANCE_S:
        raise AudioError(f"{path}: end={end} s is beyond the file's duration ({duration:.3f} s)", reason="bad span")
    first = 0 if start is None else round(start * rate)
    last = total if end is None else min(round(end * rate), total)
    if last <= first:
        raise AudioError(f"{path}: slice {start}..{end} s holds no samples", reason="bad span")
    return first, last


def is_silent(wav: torch.Tensor, threshold_db: float = -60.0) -> bool:
    """True when the clip's PEAK level is below `threshold_db` dBFS (an empty clip is silent).

    Peak rather than RMS: it does not depend on how much leading/trailing silence a clip has,
    so a short word in a long quiet file is not called silent.
    """
    if wav.numel() == 0:
        return True
    peak = wav.detach().abs().max().item()
    return peak <= 10.0 ** (threshold_db / 20.0)


def save_wav(
    path: str | os.PathLike, wav: torch.Tensor, sample_rate: int = SAMPLE_RATE, *, subtype: str = "PCM_16"
) -> None:
    """Write a 1-D clip as a mono wav (`subtype` "PCM_16" or "FLOAT"), atomically.

    The file is written to a temporary name beside `path` then renamed, so a crash never
    leaves a half-written wav under the final name.
    """
    if wav.dim() != 1:
        raise ValueError(f"save_wav expects a 1-D mono clip, got shape {tuple(wav.shape)}")
    data = wav.detach().to("cpu", torch.float32)
    if subtype.startswith("PCM"):
        # libsndfile wraps (does not clip) out-of-range floats when converting to integers.
        data = data.clamp(-1.0, 1.0)
    path = Path(path)
    # Hidden, per-process temp name (not mkstemp: its 0600 mode would carry over to the wav).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.wav.tmp")
    try:
        sf.write(tmp, data.numpy(), sample_rate, subtype=subtype, format="WAV")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
