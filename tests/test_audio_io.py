from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from csm_adapt.audio_io import SAMPLE_RATE, is_silent, load_audio, save_wav
from csm_adapt.errors import AudioError


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def test_stereo_44k_is_downmixed_and_resampled(tmp_path):
    left = tone(1.0, 44_100, 440.0)
    right = -0.5 * left  # channel mean is 0.25 * left: a wrong down-mix shows in the level
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44_100, subtype="FLOAT")

    wav = load_audio(path)

    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert wav.shape[0] == SAMPLE_RATE  # 1 s at 24 kHz
    assert wav.abs().max().item() == pytest.approx(0.125, abs=0.01)


def test_start_end_slice_reads_only_that_span(tmp_path):
    rate = 16_000
    # A ramp: each sample's value says where it came from.
    data = np.linspace(0, 1, 3 * rate, endpoint=False, dtype=np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, data, rate, subtype="FLOAT")

    wav = load_audio(path, start=1.0, end=1.5, sample_rate=rate)

    assert wav.shape[0] == rate // 2
    assert wav[0].item() == pytest.approx(1 / 3, abs=1e-6)
    assert wav[-1].item() == pytest.approx(data[rate + rate // 2 - 1], abs=1e-6)
    assert load_audio(path, start=2.0, sample_rate=rate).shape[0] == rate
    assert load_audio(path, end=0.25, sample_rate=rate).shape[0] == rate // 4


def test_end_rounded_past_the_last_sample_is_accepted(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(1.2345, 16_000), 16_000)
    assert load_audio(path, end=1.24, sample_rate=16_000).shape[0] == round(1.2345 * 16_000)


@pytest.mark.parametrize(
    ("start", "end", "reason"),
    [
        (None, 5.0, "beyond the file's duration"),
        (3.0, None, "beyond the file's duration"),
        (1.0, 1.0, "must be before end"),
        (1.5, 0.5, "must be before end"),
        (-0.1, None, "must be a finite time >= 0"),
    ],
)
def test_bad_slices_name_file_and_reason(tmp_path, start, end, reason):
    path = tmp_path / "two_seconds.wav"
    sf.write(path, tone(2.0, 16_000), 16_000)
    with pytest.raises(AudioError, match=reason) as err:
        load_audio(path, start=start, end=end)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="file not found") as err:
        load_audio(path)
    assert str(path) in str(err.value)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 8)
    with pytest.raises(AudioError, match="cannot decode audio") as err:
        load_audio(path)
    assert str(path) in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match="empty audio") as err:
        load_audio(path)
    assert str(path) in str(err.value)


def test_nan_samples_are_rejected(tmp_path):
    data = tone(0.5, 16_000)
    data[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, data, 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype", "tolerance"),
    [
        ("flac", "FLAC", "PCM_16", 1e-4),
        ("ogg", "OGG", "VORBIS", None),
        ("opus", "OGG", "OPUS", None),
        ("mp3", "MP3", "MPEG_LAYER_III", None),
    ],
)
def test_compressed_formats_round_trip(tmp_path, suffix, fmt, subtype, tolerance):
    rate = 48_000 if subtype == "OPUS" else 24_000  # Opus only codes 8/12/16/24/48 kHz
    data = tone(1.0, rate, 300.0)
    path = tmp_path / f"clip.{suffix}"
    sf.write(path, data, rate, format=fmt, subtype=subtype)

    wav = load_audio(path)

    # soundfile decodes these gaplessly: exact length, at 24 kHz after resampling.
    assert wav.shape[0] == SAMPLE_RATE
    if tolerance is not None:  # lossless
        assert torch.allclose(wav, torch.from_numpy(data), atol=tolerance)
    else:  # lossy: the tone's level survives
        rms = wav[2400:-2400].pow(2).mean().sqrt().item()
        assert rms == pytest.approx(0.5 / math.sqrt(2), rel=0.15)


def test_is_silent_uses_peak_level():
    assert is_silent(torch.zeros(1000))
    assert is_silent(torch.empty(0))
    assert is_silent(torch.full((1000,), 10 ** (-70 / 20)))
    assert not is_silent(torch.full((1000,), 10 ** (-50 / 20)))
    # One loud sample in long silence: a peak detector calls it not silent; RMS would not.
    click = torch.zeros(100_000)
    click[0] = 0.01
    assert not is_silent(click)
    assert is_silent(torch.full((10,), 0.01), threshold_db=-30)


def test_save_wav_writes_16bit_pcm_atomically_and_clips(tmp_path):
    path = tmp_path / "out.wav"
    wav = torch.tensor([0.0, 0.5, -0.5, 1.5, -1.5])

    save_wav(path, wav)

    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    back, _ = sf.read(path, dtype="float32")
    assert np.allclose(back, [0.0, 0.5, -0.5, 1.0, -1.0], atol=1e-4)  # clipped, not wrapped
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temp file left behind


def test_save_wav_float_round_trips_exactly(tmp_path):
    path = tmp_path / "f.wav"
    wav = torch.randn(2400) * 0.3
    save_wav(path, wav, 16_000, subtype="FLOAT")
    assert torch.equal(load_audio(path, sample_rate=16_000), wav)


def test_save_wav_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "keep.wav"
    save_wav(path, torch.zeros(10))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        save_wav(path, torch.zeros(10), subtype="NOT_A_SUBTYPE")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]
