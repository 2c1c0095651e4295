"""Text -> wav through the Python API and `csm-adapt generate`, with the offline tokenizer and codec."""

from pathlib import Path

import attrs
import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from csm_adapt.audio_io import load_audio
from csm_adapt.cli import cli
from csm_adapt.model.checkpoint import save_model
from csm_adapt.model.synthesizer import Segment, Synthesizer, write_frontend

DEMO_WAVS = Path(__file__).parents[1] / "recipes" / "demo_data" / "wavs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, micro_model):
    directory = tmp_path_factory.mktemp("micro")
    save_model(micro_model, directory)
    write_frontend(directory, "offline", "offline")
    return directory


@pytest.fixture(scope="module")
def speech(checkpoint):
    return Synthesizer.load(checkpoint)  # tokenizer and codec from the checkpoint's csm_adapt.json


def test_generate_is_seedable_and_batched(speech):
    a = speech.generate(["Bonjour.", "Marie aime les pommes."], speaker=1, max_audio_ms=400, seed=0)
    b = speech.generate(["Bonjour.", "Marie aime les pommes."], speaker=1, max_audio_ms=400, seed=0)
    assert len(a) == 2
    for x, y in zip(a, b):
        assert torch.equal(x.frames, y.frames)
        assert x.frames.shape[0] == 32 and 0 < x.frames.shape[1] <= 5  # 400 ms = 5 frames
        assert x.audio.shape == (x.frames.shape[1] * 1920,)
    c = speech.generate(["Bonjour."], speaker=1, max_audio_ms=400, seed=1)
    assert not torch.equal(a[0].frames, c[0].frames)
    # In a batch each text gets what it gets alone (greedy, so that no random draw is shared between them).
    texts = ["Bonjour.", "Marie aime les pommes."]
    batched = speech.generate(texts, speaker=1, max_audio_ms=400, topk=1)
    for text, together in zip(texts, batched):
        alone = speech.generate([text], speaker=1, max_audio_ms=400, topk=1)[0]
        assert torch.equal(together.frames, alone.frames) and torch.equal(together.audio, alone.audio)


def test_context_changes_the_prompt(speech):
    clip = sorted(DEMO_WAVS.glob("*.wav"))[0]
    plain = speech.generate(["Bonjour."], speaker=0, max_audio_ms=240, topk=1)[0]
    with_ctx = speech.generate(
        ["Bonjour."], speaker=0, context=[Segment(0, "Un exemple.", clip)], max_audio_ms=240, topk=1
    )[0]
    # Same text, greedy: only the context can make the frames differ.
    assert not torch.equal(plain.frames, with_ctx.frames)
    tensor_ctx = speech.generate(
        ["Bonjour."], speaker=0, context=[Segment(0, "Un exemple.", load_audio(clip))], max_audio_ms=240, topk=1
    )[0]
    assert torch.equal(with_ctx.frames, tensor_ctx.frames)


def test_cli_generate_writes_wavs_and_frames(checkpoint, tmp_path):
    clip = sorted(DEMO_WAVS.glob("*.wav"))[0]
    out = tmp_path / "out.wav"
    args = [
        "generate", "--model", str(checkpoint), "--text", "Bonjour.", "--text", "Au revoir.", "--speaker", "2",
        "--context", "0", "Un exemple.", str(clip), "--out", str(out), "--max-audio-ms", "320", "--seed", "0",
        "--save-frames", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    for i in range(2):
        wav, frames = tmp_path / f"out-{i}.wav", np.load(tmp_path / f"out-{i}.npy")
        data, rate = sf.read(wav)
        assert rate == 24_000 and frames.dtype == np.int16 and frames.shape[0] == 32
        assert len(data) == frames.shape[1] * 1920
        assert str(wav) in result.output


def test_cli_generate_reports_a_bad_checkpoint(tmp_path):
    result = CliRunner().invoke(cli, ["generate", "--model", str(tmp_path), "--text", "x", "--device", "cpu"])
    assert result.exit_code == 2
    assert str(tmp_path) in result.output and "config.json" in result.output


def test_a_tokenizer_too_big_for_the_model_is_refused(checkpoint):
    from csm_adapt.errors import ConfigError

    speech = Synthesizer.load(checkpoint)
    speech.model.args = attrs.evolve(speech.model.args, text_vocab_size=100)
    with pytest.raises(ConfigError, match="987 ids but the model's text vocabulary holds 100"):
        Synthesizer(speech.model, speech.text_tokenizer, speech.audio_codec)
