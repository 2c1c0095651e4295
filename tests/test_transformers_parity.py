"""Our CSM against transformers' independent port, loaded from the same weights via the transformers layout.

transformers is in the `test` extra: these tests always run (tests/test_checkpoint.py checks the q/k rows without it).
"""

import pytest
import torch
import torch.nn.functional as F
import transformers

from csm_adapt.model.checkpoint import load_model, save_model
from csm_adapt.model.config import MODEL_CONFIGS
from csm_adapt.model.csm import CSM
from csm_adapt.model.generation import generate_frames
from csm_adapt.model.rows import audio_frame_mask, audio_rows, text_rows
from csm_adapt.model.transformers_layout import to_transformers

K = 32  # transformers' CSM, like Mimi, has 32 codebooks
# transformers builds an (untrained) Mimi inside the model; one layer keeps that fast.
SMALL_CODEC = dict(num_hidden_layers=1, num_quantizers=K)


@pytest.fixture(scope="module")
def ours(sharp_micro_model):
    return sharp_micro_model  # tests/conftest.py: large weights, any layout error changes the outputs visibly


@pytest.fixture(scope="module")
def theirs(ours, tmp_path_factory):
    directory = save_model(ours, tmp_path_factory.mktemp("hf"), layout="transformers")
    model, info = transformers.CsmForConditionalGeneration.from_pretrained(
        directory, codec_config=transformers.MimiConfig(**SMALL_CODEC), output_loading_info=True
    )
    # Everything but the codec comes from our file.
    assert not [k for k in info["missing_keys"] if not k.startswith("codec_model.")]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    return model.eval()


@pytest.fixture(scope="module")
def rows():
    """Text, audio (with EOS frame), text, audio: a two-utterance conversation."""
    g = torch.Generator().manual_seed(0)
    parts = [
        text_rows([5, 6, 7, 8, 9], K),
        audio_rows(torch.randint(0, 2048, (K, 6), generator=g)),
        text_rows([10, 11, 12], K),
        audio_rows(torch.randint(0, 2048, (K, 4), generator=g)),
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def their_inputs(theirs, tokens, mask):
    """transformers' own embeddings of our rows and its labels: codes on audio rows, -100 on text."""
    audio = audio_frame_mask(mask)[:, None]
    embeds = torch.where(
        audio, theirs.backbone_model.embed_tokens(tokens[None, :, :K])[0], theirs.embed_text_tokens(tokens[:, K])
    )
    labels = torch.where(audio, tokens[:, :K], -100)
    return embeds[None], labels[None]


@torch.no_grad()
def test_logits_and_losses_match(ours, theirs, rows):
    tokens, mask = rows
    embeds, labels = their_inputs(theirs, tokens, mask)
    out = theirs(inputs_embeds=embeds, labels=labels)

    h = ours.backbone(ours.embed_rows(tokens[None], mask[None]), torch.arange(len(tokens))[None])
    torch.testing.assert_close(ours.codebook0_head(h), out.logits, rtol=1e-4, atol=1e-4)

    # transformers trains its depth decoder on every frame whose labels are not all -100: all of them here.
    targets = audio_frame_mask(mask)[None]
    mine = ours(tokens[None], mask[None], targets)
    assert mine.decoder_logits.shape == out.depth_decoder_logits.shape == (12, K - 1, 2051)
    torch.testing.assert_close(mine.decoder_logits, out.depth_decoder_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(F.cross_entropy(mine.c0_logits, mine.c0_targets), out.backbone_loss)
    decoder_ce = F.cross_entropy(mine.decoder_logits.flatten(0, 1), mine.decoder_targets.flatten())
    torch.testing.assert_close(decoder_ce, out.depth_decoder_loss)


@torch.no_grad()
def test_greedy_generation_gives_the_same_frames(ours, theirs, rows):
    tokens, mask = rows
    frames = generate_frames(ours, [(tokens, mask)], max_frames=4, topk=1)[0]
    embeds, _ = their_inputs(theirs, tokens, mask)
    generated = theirs.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False, depth_decoder_do_sample=False)
    # Both stop at an all-zero frame; ours leaves it out. Random weights rarely produce one.
    assert frames.shape[1] > 0
    assert torch.equal(frames.T, generated[0, : frames.shape[1]])


def test_transformers_save_pretrained_loads(ours, theirs, tmp_path):
    """A checkpoint transformers wrote itself (with codec weights and its tied-embedding names) loads."""
    theirs.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.args == ours.args
    for name, tensor in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_csm_1b_config_matches_transformers_defaults():
    """transformers' CsmConfig defaults are csm-1b; our csm-1b config must agree, RoPE numbers included."""
    with torch.device("meta"):
        state = CSM(MODEL_CONFIGS["csm-1b"]).state_dict()
    _, config = to_transformers(state, MODEL_CONFIGS["csm-1b"])
    theirs = transformers.CsmConfig()
    for key in [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "vocab_size",
        "text_vocab_size",
        "num_codebooks",
        "codebook_pad_token_id",
        "codebook_eos_token_id",
        "audio_token_id",
        "audio_eos_token_id",
        "bos_token_id",
        "pad_token_id",
    ]:
        assert config[key] == getattr(theirs, key), key
    for key in [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "backbone_hidden_size",
        "vocab_size",
    ]:
        assert config["depth_decoder_config"][key] == getattr(theirs.depth_decoder_config, key), key
    # The published csm-1b transformers config numbers: the same curve as the original 32/1/4/8192.
    assert config["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 0.125,
        "high_freq_factor": 0.5,
        "original_max_position_embeddings": 1024,
    }
    assert config["depth_decoder_config"]["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1 / 512,
        "high_freq_factor": 1 / 128,
        "original_max_position_embeddings": 16,
    }
