"""The model on its own: layout invariants, packing, caching and generation consistency."""

import math

import pytest
import torch

from csm_adapt.errors import GenerationError
from csm_adapt.model.checkpoint import build_model
from csm_adapt.model.config import FLAVORS, MODEL_CONFIGS
from csm_adapt.model.csm import CSM
from csm_adapt.model.generation import generate_frames, sample_topk
from csm_adapt.model.llama import Segments, _rope_table, apply_rope, rope_frequencies
from csm_adapt.model.rows import audio_frame_mask, audio_rows, text_rows, utterance_rows
from document_mask import attention_mask  # tests/document_mask.py

K = 32


@pytest.fixture
def model(sharp_micro_model):
    return sharp_micro_model  # tests/conftest.py: large weights, outputs that differ visibly when anything is wrong


def sample_rows(seed: int, n_text: int, n_frames: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1024, (n_text,), generator=g).tolist()
    codes = torch.randint(1, 2048, (K, n_frames), generator=g)
    return utterance_rows(ids, codes)


def test_rope_is_interleaved_pairs():
    # Rotating (x[2i], x[2i+1]) by angle a keeps each pair's norm and rotates it by a.
    x = torch.zeros(1, 1, 1, 8)
    x[..., 2], x[..., 3] = 1.0, 0.0  # pair 1
    a = 0.7
    cos, sin = torch.full((1, 1, 4), math.cos(a)), torch.full((1, 1, 4), math.sin(a))
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y[..., 2:4].flatten(), torch.tensor([math.cos(a), math.sin(a)]))
    assert torch.all(y[..., [0, 1, 4, 5, 6, 7]] == 0)
    # The pair's second axis too: (0, 1) rotated by a is (-sin a, cos a).
    x[..., 2], x[..., 3] = 0.0, 1.0
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y[..., 2:4].flatten(), torch.tensor([-math.sin(a), math.cos(a)]))


def test_rope_llama3_scaling_curve():
    f = FLAVORS["llama-1B"]
    scaled = rope_frequencies(f)
    base = 1.0 / (f.rope_base ** (torch.arange(0, f.head_dim, 2).double() / f.head_dim))
    wavelen = 2 * math.pi / base
    # high frequencies kept, low ones divided by the factor, a smooth blend in between
    assert torch.allclose(scaled[wavelen < 2048], base[wavelen < 2048].float())
    assert torch.allclose(scaled[wavelen > 8192], (base[wavelen > 8192] / 32).float())
    mid = (wavelen >= 2048) & (wavelen <= 8192)
    assert mid.any() and torch.all(scaled[mid] < base[mid].float()) and torch.all(scaled[mid] > base[mid].float() / 32)


def test_no_buffers_in_state_dict():
    with torch.device("meta"):
        m = CSM(MODEL_CONFIGS["csm-1b"])
    assert len(m.state_dict()) == 187
    assert list(m.buffers()) == []


def test_segments_regroup_packed_rows():
    doc = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 1, 1]])
    seg = Segments.from_doc_ids(doc)
    assert seg.index.tolist() == [[0, 1, 12, 12], [2, 3, 4, 12], [5, 12, 12, 12], [6, 7, 8, 9], [10, 11, 12, 12]]
    x = torch.randn(2, 6, 3)
    assert torch.equal(seg.scatter(seg.gather(x), x.shape), x)


def test_segment_attention_equals_the_dense_document_mask(model):
    layer = model.backbone.layers[0].attn
    doc = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]])
    cos, sin = (t[pos] for t in _rope_table(model.backbone.flavor, torch.device("cpu")))
    x = torch.randn(1, 8, model.backbone.flavor.embed_dim)
    with torch.no_grad():
        dense = layer(x, cos, sin, attention_mask(doc), None)
        segmented = layer(x, cos, sin, Segments.from_doc_ids(doc), None)
    assert torch.allclose(dense, segmented, atol=1e-5)


def test_packed_forward_equals_separate(model):
    (t1, m1), (t2, m2) = sample_rows(1, 5, 7), sample_rows(2, 4, 9)
    separate = []
    for t, m in ((t1, m1), (t2, m2)):
        tm = audio_frame_mask(m)[None]
        with torch.no_grad():
            separate.append(model(t[None], m[None], tm))
    tokens, mask = torch.cat([t1, t2])[None], torch.cat([m1, m2])[None]
    pos = torch.cat([torch.arange(len(t1)), torch.arange(len(t2))])[None]
    doc = torch.cat([torch.zeros(len(t1)), torch.ones(len(t2))]).long()[None]
    tm = audio_frame_mask(mask)
    with torch.no_grad():
        packed = model(tokens, mask, tm, input_pos=pos, doc_ids=doc)
    ref_c0 = torch.cat([o.c0_logits for o in separate])
    ref_dec = torch.cat([o.decoder_logits for o in separate])
    assert torch.allclose(packed.c0_logits, ref_c0, atol=1e-4)
    assert torch.allclose(packed.decoder_logits, ref_dec, atol=1e-4)
    assert torch.equal(packed.c0_targets, torch.cat([o.c0_targets for o in separate]))


def test_targets_are_next_frame_conditioned_on_previous_state(model):
    tokens, mask = sample_rows(3, 4, 6)
    tm = audio_frame_mask(mask)[None]
    with torch.no_grad():
        out = model(tokens[None], mask[None], tm)
    frames = tokens[4:, :K]  # 6 frames + EOS frame: every audio row is a target
    assert out.c0_logits.shape == (7, 2051)
    assert torch.equal(out.c0_targets, frames[:, 0])
    assert torch.equal(out.decoder_targets, frames[:, 1:])
    # Changing frame t must not change the prediction of frame t (it sees only rows < t).
    edited = tokens.clone()
    edited[6, :K] = 5
    with torch.no_grad():
        out2 = model(edited[None], mask[None], tm)
    assert torch.allclose(out.c0_logits[:3], out2.c0_logits[:3]) and not torch.allclose(
        out.c0_logits[3], out2.c0_logits[3]
    )


def test_decoder_mask_selects_subset(model):
    tokens, mask = sample_rows(4, 3, 8)
    tm = audio_frame_mask(mask)[None]
    dm = torch.zeros_like(tm)
    dm[0, [5, 9]] = True
    with torch.no_grad():
        full = model(tokens[None], mask[None], tm)
        sub = model(tokens[None], mask[None], tm, decoder_mask=dm)
    assert sub.decoder_logits.shape[0] == 2
    # rows 5 and 9 are frames 2 and 6 of the target list (targets start at row 3)
    assert torch.allclose(sub.decoder_logits, full.decoder_logits[[2, 6]], atol=1e-6)


def test_greedy_generation_matches_teacher_forcing(model):
    prompt = text_rows([1, 5, 7, 9], K)
    frames = generate_frames(model, [prompt], 8, topk=1)[0]
    assert frames.shape == (K, 8)
    a_tok, a_mask = audio_rows(frames, eos=False)
    tokens, mask = torch.cat([prompt[0], a_tok])[None], torch.cat([prompt[1], a_mask])[None]
    with torch.no_grad():
        out = model(tokens, mask, audio_frame_mask(mask))
    assert torch.equal(out.c0_logits.argmax(-1), frames[0])
    assert torch.equal(out.decoder_logits.argmax(-1), frames[1:].t())


def test_batched_generation_equals_one_by_one(model):
    short = text_rows([1, 2], K)
    long_ = tuple(torch.cat(p) for p in zip(sample_rows(5, 6, 10), text_rows([3, 4, 5], K)))
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    both = generate_frames(model, [short, long_], 6, generator=g(), topk=1)
    assert torch.equal(both[0], generate_frames(model, [short], 6, topk=1)[0])
    assert torch.equal(both[1], generate_frames(model, [long_], 6, topk=1)[0])


def test_sampling_is_seedable_and_topk_restricts():
    logits = torch.randn(4, 100)
    a = sample_topk(logits, 5, 0.9, torch.Generator().manual_seed(1))
    b = sample_topk(logits, 5, 0.9, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    top5 = torch.topk(logits, 5).indices
    draws = torch.cat([sample_topk(logits, 5, 1.5, None) for _ in range(50)], dim=1)
    assert all(set(draws[i].tolist()) <= set(top5[i].tolist()) for i in range(4))
    assert torch.equal(sample_topk(logits, 1, 0.9, None)[:, 0], logits.argmax(-1))


def test_zero_frame_stops_each_sample(model, monkeypatch):
    # Sample 0 emits the all-zero EOS frame at step 2, sample 1 at step 4: each keeps its own frames.
    import csm_adapt.model.generation as gen

    steps = iter(range(100))

    def fake_frame(model, last_h, topk, temperature, g):
        step = next(steps)
        frame = torch.full((2, K), step + 1)
        frame[0] *= step != 2
        frame[1] *= step != 4
        return frame

    monkeypatch.setattr(gen, "_sample_frame", fake_frame)
    out = gen.generate_frames(model, [text_rows([1, 2], K), text_rows([3], K)], 10)
    assert out[0].shape == (K, 2) and out[1].shape == (K, 4)
    assert torch.equal(out[1][0], torch.tensor([1, 2, 3, 4]))


def test_prompt_without_room_is_a_clear_error(model):
    prompt = text_rows(list(range(2000)), K)
    with pytest.raises(GenerationError, match="2000 rows.*100 frames.*2048"):
        generate_frames(model, [prompt], 100)


def test_eos_is_the_all_zero_frame_and_ends_each_sample_once(model, monkeypatch):
    # Frames with some zero codes are audio; sample 0 sends EOS at steps 2 and 4 (the first one ends it),
    # sample 1 at step 5.
    import csm_adapt.model.generation as gen

    steps = iter(range(100))

    def fake_frame(model, last_h, topk, temperature, g):
        step = next(steps)
        frame = torch.full((2, K), step + 1)
        frame[:, : step + 1] = 0  # step s: the first s+1 codebooks are 0
        frame[0] *= step not in (2, 4)
        frame[1] *= step != 5
        return frame

    monkeypatch.setattr(gen, "_sample_frame", fake_frame)
    out = gen.generate_frames(model, [text_rows([1, 2], K), text_rows([3], K)], 10)
    assert out[0].shape == (K, 2) and out[1].shape == (K, 5)
    assert torch.equal(out[1][0], torch.zeros(5, dtype=torch.long))  # codebook 0 is 0 in every frame, not an EOS
    assert torch.equal(out[1][K - 1], torch.tensor([1, 2, 3, 4, 5]))


def eos_prone_model(c0_zero_logit: float) -> CSM:
    """A seeded micro model that samples its own EOS: codebooks 1..31 are always 0, codebook 0 is 0
    (so the frame is EOS) with a fixed probability per frame.

    Its layers add nothing (output projections zeroed), so each state is the normalised embedding of
    the current row, whose dimension 0 is the only one the final norms keep and is always positive
    (every embedding row holds 1 there). The heads read only that dimension: the depth decoder's
    favour code 0 overwhelmingly, codebook 0's gives code 0 the logit `c0_zero_logit` and every
    other code 0.
    """
    m = build_model("micro", seed=11)
    with torch.no_grad():
        for layer in [*m.backbone.layers, *m.decoder.layers]:
            layer.attn.output_proj.weight.zero_()
            layer.mlp.w2.weight.zero_()
        m.text_embeddings.weight[:, 0] = 1.0
        m.audio_embeddings.weight[:, 0] = 1.0
        for norm in (m.backbone.norm, m.decoder.norm):
            norm.scale.zero_()
            norm.scale[0] = 1.0
        m.projection.weight.zero_()
        m.projection.weight[0, 0] = 1.0
        h0 = m.backbone.flavor.embed_dim**0.5  # dimension 0 of the normalised state: sqrt(D) when only it is non-zero
        m.codebook0_head.weight.zero_()
        m.codebook0_head.weight[0, 0] = c0_zero_logit / h0
        m.audio_head.zero_()
        m.audio_head[:, 0, 0] = 100.0
    return m.eval()


def test_a_real_model_that_samples_its_own_eos_stops_each_sample_there():
    # P(EOS) per frame: e^7.5 / (e^7.5 + 2050 other codes) ~ 47 %.
    model = eos_prone_model(7.5)
    prompts = [text_rows([1, 2, 3], K), text_rows([4], K), text_rows([5, 6], K), text_rows([7, 8, 9, 10], K)]
    out = generate_frames(model, prompts, 24, topk=2051, temperature=1.0, generator=torch.Generator().manual_seed(0))
    lengths = [o.shape[1] for o in out]
    assert len(set(lengths)) > 1 and min(lengths) < 24  # each sample stops on its own
    for o in out:
        assert not (o[1:] != 0).any()  # every frame has zero codes: codebooks 1..31
        assert (o[0] != 0).all()  # and none is the EOS (a later EOS must not extend a sample that ended)
