from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from csm_adapt.audio_io import load_audio
from csm_adapt.errors import CsmAdaptError
from csm_adapt.model.audio_codec import AudioCodec

DEMO_WAVS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "demo_data" / "wavs").glob("*.wav"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("csm-adapt-cache")


@pytest.fixture(scope="module")
def codec(cache_dir) -> AudioCodec:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSM_ADAPT_CACHE", str(cache_dir))
        return AudioCodec.load("offline")


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    # The offline fit uses every third clip from the first; these four are unseen speech.
    return [load_audio(p) for p in DEMO_WAVS[1::3][:4]]


@pytest.fixture(scope="module")
def codes(codec, clips) -> list[torch.Tensor]:
    return codec.encode(clips)


def test_sizes(codec):
    assert (codec.sample_rate, codec.frame_rate, codec.samples_per_frame, codec.num_codebooks) == (
        24000,
        12.5,
        1920,
        32,
    )
    assert codec.identity.startswith("mimi-offline-sha256:")


def test_codes_shape_and_range(clips, codes):
    assert len(codes) == len(clips)
    for wav, c in zip(clips, codes):
        assert wav.shape[0] % 1920 != 0  # the partial last frame is counted
        assert c.dtype == torch.long and c.shape == (32, math.ceil(wav.shape[0] / 1920))
        assert 0 <= c.min() and c.max() < 2048


def test_offline_codes_follow_the_speech(codes):
    for c in codes:
        assert c.any()  # an unfitted random Mimi gives all zeros: CSM's EOS frame
        for book in c:  # every codebook varies over time and uses many codes
            assert (book[1:] != book[:-1]).float().mean() > 0.5
            assert book.unique().numel() >= c.shape[1] // 3


def test_batched_equals_one_by_one(codec, clips, codes):
    for wav, batched in zip(clips, codes):
        assert torch.equal(codec.encode([wav])[0], batched)


def test_end_padding_leaves_codes_unchanged(codec, clips, codes):
    # Mimi is causal: trailing zeros only add frames after the clip's own.
    padded = torch.cat([clips[0], torch.zeros(3 * 1920 + 77)])
    longer = codec.encode([padded])[0]
    assert torch.equal(longer[:, : codes[0].shape[1]], codes[0])


def test_deterministic_across_fresh_fits_and_the_cache(codec, cache_dir, clips, codes, tmp_path, monkeypatch):
    monkeypatch.setenv("CSM_ADAPT_CACHE", str(cache_dir))
    cached = AudioCodec.load("offline")
    monkeypatch.setenv("CSM_ADAPT_CACHE", str(tmp_path))
    refit = AudioCodec.load("offline")
    for other in (cached, refit):
        assert other.identity == codec.identity
        assert torch.equal(other.encode(clips[:1])[0], codes[0])
    assert list(tmp_path.glob("offline-mimi-latents-*.pt"))  # the fit was cached


def test_decode_shape(codec, codes):
    frames = codes[0].shape[1]
    audio = codec.decode(torch.stack([codes[0], codes[0]]))
    assert audio.shape == (2, frames * 1920) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all() and audio.abs().max() > 0


def test_encode_rejects_empty_clip(codec):
    with pytest.raises(ValueError, match="empty"):
        codec.encode([torch.zeros(0)])
    assert codec.encode([]) == []


def test_missing_weights_file(tmp_path):
    with pytest.raises(CsmAdaptError, match="not found"):
        AudioCodec.load(str(tmp_path / "mimi.safetensors"))


def test_bad_weights_file(tmp_path):
    bad = tmp_path / "mimi.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(CsmAdaptError, match="not a Mimi weights file") as err:
        AudioCodec.load(str(bad))
    assert str(bad) in str(err.value)
