"""The model-based evaluators, `intelligibility` (Whisper) and `speaker_similarity` (WavLM x-vector):
metric arithmetic on known strings and embeddings, and the real loading code (local folder, hub id
from an offline Hugging Face cache) on tiny random models built from their transformers configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import EvalContext, Utterance
from csm_adapt_plugins.intelligibility_evaluator import (
    IntelligibilityEvaluator,
    IntelligibilityOptions,
    error_rates,
    normalize,
)
from csm_adapt_plugins.speaker_similarity_evaluator import SpeakerSimilarityEvaluator, SpeakerSimilarityOptions

CPU = EvalContext(torch.device("cpu"))


def utterance(text="Bonjour.", audio=None, references=()):
    audio = torch.randn(12_000, generator=torch.Generator().manual_seed(len(text))) * 0.1 if audio is None else audio
    return Utterance("p", text, 0, audio, torch.zeros(32, 1, dtype=torch.long), True, 2000, tuple(references))


# Text normalisation and error rates


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("Le garçon a mangé 3 pommes.", "fr", "le garçon a mangé trois pommes"),
        ("« Où est la gare ? » demanda-t-elle.", "fr", "où est la gare demanda t elle"),
        ("L’homme est là, 23 fois.", "fr", "l homme est là vingt trois fois"),
        ("Il mesure 1,5 mètre", "fr", "il mesure un virgule cinq mètre"),
        ("Don't pay $23.50!", "en", "dont pay twenty three point five"),
        ("Don't pay 23!", None, "dont pay 23"),
        ("  Hello,   WORLD  ", "en", "hello world"),
    ],
)
def test_normalize(text, language, expected):
    assert normalize(text, language) == expected


def test_error_rates_on_known_strings():
    assert error_rates("a b c d", "a x c") == {"cer": pytest.approx(3 / 7), "wer": pytest.approx(0.5)}
    assert error_rates("bonjour marie", "bonjour marie") == {"cer": 0.0, "wer": 0.0}
    assert error_rates("abc", "") == {"cer": 1.0, "wer": 1.0}


# Tiny random models saved as transformers would save the real ones


def tiny_whisper(directory: Path) -> Path:
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip
    vocab.update({s: len(vocab) + i for i, s in enumerate(specials)})
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    end = "<|endoftext|>"
    tokenizer = WhisperTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"),
        unk_token=end, bos_token=end, eos_token=end, pad_token=end,
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    ids = {s: vocab[s] for s in specials}
    config = WhisperConfig(
        vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_target_positions=64,
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids[end], pad_token_id=ids[end],
        bos_token_id=ids[end], begin_suppress_tokens=None, suppress_tokens=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, max_length=64, is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|fr|>": ids["<|fr|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
    )  # fmt: skip
    model.save_pretrained(directory)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(directory)
    return directory


def tiny_wavlm(directory: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    config = WavLMConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, conv_dim=(16, 16),
        conv_stride=(5, 4), conv_kernel=(10, 8), tdnn_dim=(16, 16), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1),
        xvector_output_dim=8, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    torch.manual_seed(0)
    WavLMForXVector(config).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, return_attention_mask=True).save_pretrained(directory)
    return directory


def test_intelligibility_transcribes_and_scores_with_a_local_whisper(tmp_path):
    folder = tiny_whisper(tmp_path / "whisper")
    evaluator = IntelligibilityEvaluator(
        IntelligibilityOptions(model=str(folder), language="fr", max_new_tokens=4), CPU
    )
    out = evaluator.evaluate([utterance("Le garçon a mangé 3 pommes."), utterance("!!", audio=torch.zeros(0))])
    assert set(out[0]) == {"transcript", "cer", "wer"} and isinstance(out[0]["transcript"], str)
    transcript = normalize(out[0]["transcript"], "fr")
    assert out[0] == {"transcript": out[0]["transcript"], **error_rates("le garçon a mangé trois pommes", transcript)}
    assert out[1] == {"transcript": ""}  # nothing to compare against once "!!" is normalised away
    assert (
        evaluator.models()["cer"].startswith(f"{folder} (transformers ") and "language fr" in evaluator.models()["cer"]
    )


def test_speaker_similarity_is_the_mean_cosine_to_the_reference_clips(tmp_path):
    evaluator = SpeakerSimilarityEvaluator(SpeakerSimilarityOptions(model=str(tiny_wavlm(tmp_path / "wavlm"))), CPU)
    # The real model end to end: an utterance compared with itself as reference is similarity 1.
    clip = torch.randn(16_000, generator=torch.Generator().manual_seed(1)) * 0.1
    [same] = evaluator.evaluate([utterance(audio=clip, references=[clip.clone()])])
    assert same["sim"] == pytest.approx(1.0, abs=1e-5)

    # The arithmetic, on known embeddings.
    ref_a, ref_b, gen = torch.zeros(10), torch.ones(10), torch.full((10,), 2.0)
    vectors = {id(ref_a): [1.0, 0.0], id(ref_b): [0.0, 1.0], id(gen): [1.0, 1.0]}
    calls = []

    def embed(clips):
        calls.append(len(clips))
        return [torch.tensor(vectors[id(c)]) for c in clips]

    evaluator.embed = embed
    batch = [utterance(audio=gen, references=[ref_a, ref_b]), utterance(audio=gen), utterance(audio=torch.zeros(0))]
    assert evaluator.evaluate(batch) == [{"sim": pytest.approx(np.cos(np.pi / 4))}, {}, {}]
    assert evaluator.evaluate(batch[:1])[0]["sim"] == pytest.approx(np.cos(np.pi / 4))
    assert calls == [2, 1, 0, 1]  # references embedded once, then reused


HUB_SCRIPT = """
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import EvalContext
from csm_adapt_plugins.intelligibility_evaluator import IntelligibilityEvaluator, IntelligibilityOptions
from csm_adapt_plugins.speaker_similarity_evaluator import SpeakerSimilarityEvaluator, SpeakerSimilarityOptions
import torch
ctx = EvalContext(torch.device("cpu"))
w = IntelligibilityEvaluator(IntelligibilityOptions(model="someone/whisper-tiny-random", language="en"), ctx)
s = SpeakerSimilarityEvaluator(SpeakerSimilarityOptions(model="someone/wavlm-tiny-random"), ctx)
print("MODELS:", w.models()["wer"], "|", s.models()["sim"])
try:
    IntelligibilityEvaluator(IntelligibilityOptions(model="openai/whisper-large-v3"), ctx)
except CsmAdaptError as e:
    print("ERROR:", e)
"""


def test_hub_ids_load_from_an_offline_cache(tmp_path):
    for name, build in (("whisper-tiny-random", tiny_whisper), ("wavlm-tiny-random", tiny_wavlm)):
        snapshot = tmp_path / "hub" / f"models--someone--{name}" / "snapshots" / "0123456789abcdef"
        build(snapshot)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("0123456789abcdef")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
    }
    result = subprocess.run([sys.executable, "-c", HUB_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "MODELS: someone/whisper-tiny-random@0123456789ab (transformers " in result.stdout
    assert "| someone/wavlm-tiny-random@0123456789ab (transformers " in result.stdout
    assert "ERROR: evaluator intelligibility: cannot load 'openai/whisper-large-v3'" in result.stdout
    assert "HF_HUB_OFFLINE=1" in result.stdout


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CsmAdaptError, match="evaluator speaker_similarity: cannot load"):
        SpeakerSimilarityEvaluator(SpeakerSimilarityOptions(model=str(tmp_path / "nothing")), CPU)
