"""Packing plans, sample rows and packed batches: budgets, masks, positions and the packed loss."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from csm_adapt.data.batches import collate, sample_rows
from csm_adapt.data.packing import Packer
from csm_adapt.model.rows import audio_frame_mask

K = 32


def make_sample(seed: int, turns: list[tuple[int, int, bool]]):
    """turns: (text_tokens, frames, target) -> (codes [K, F] int16, text [T] int32, meta) as in docs/data-format.md."""
    rng = np.random.default_rng(seed)
    frames = sum(f for _, f, _ in turns)
    codes = rng.integers(1, 2048, (K, frames)).astype(np.int16)
    text = rng.integers(0, 1024, sum(t for t, _, _ in turns)).astype(np.int32)
    meta = {
        "id": f"s{seed}",
        "turns": [{"speaker": 0, "text": "x", "text_tokens": t, "frames": f, "target": tg} for t, f, tg in turns],
        "rows": sum(t + f + 1 for t, f, _ in turns),
    }
    return codes, text, meta


def test_plan_places_every_sample_once_within_limits():
    rng = random.Random(0)
    lengths = [rng.randint(20, 700) for _ in range(300)]
    packer = Packer(max_rows=1024, rows_per_batch=3000, pad_multiple=64)
    plan = packer.plan(lengths)
    placed = sorted(i for batch in plan for seq in batch for i in seq)
    assert placed == list(range(len(lengths)))
    for batch in plan:
        seq_lengths = [sum(lengths[i] for i in seq) for seq in batch]
        assert max(seq_lengths) <= 1024
        s = -(-max(seq_lengths) // 64) * 64
        assert len(batch) * s <= 3000
    # First-fit decreasing keeps padding low on a realistic mix.
    rows = sum(lengths)
    padded = sum(len(b) * -(-max(sum(lengths[i] for i in seq) for seq in b) // 64) * 64 for b in plan)
    assert rows / padded > 0.9


def test_batch_holds_at_least_one_sequence_over_budget():
    plan = Packer(max_rows=100, rows_per_batch=50, pad_multiple=1).plan([90, 80, 30])
    assert [len(b) for b in plan] == [1, 1, 1]


def test_overlong_sample_is_a_clear_error():
    with pytest.raises(ValueError, match="2049 rows exceeds max_rows=2048"):
        Packer().plan([10, 2049])
    # The limit itself fits, alone in its sequence (a mutant rejecting it survived before this line).
    assert Packer(max_rows=16, rows_per_batch=64, pad_multiple=8).pack([16, 3, 13]) == [[0], [2, 1]]


def test_sample_rows_targets_only_audio_of_target_turns():
    codes, text, meta = make_sample(1, [(4, 3, False), (5, 6, True)])
    rows = sample_rows(codes, text, meta)
    assert len(rows) == meta["rows"] == (4 + 3 + 1) + (5 + 6 + 1)
    expected = torch.zeros(len(rows), dtype=torch.bool)
    expected[8 + 5 :] = True  # second turn: its 6 audio rows and its EOS frame
    assert torch.equal(rows.target_mask, expected)
    assert torch.equal(rows.tokens[8:13, -1], torch.from_numpy(text[4:]).long())
    assert torch.equal(rows.tokens[13:19, :K], torch.from_numpy(codes[:, 3:].T).long())
    assert not rows.tokens[19].any() and rows.mask[19, :K].all()  # the EOS frame
    assert torch.equal(audio_frame_mask(rows.mask), torch.tensor([0] * 4 + [1] * 4 + [0] * 5 + [1] * 7).bool())


def test_sample_rows_never_targets_row_zero():
    codes, text, meta = make_sample(2, [(0, 4, True)])  # no text: row 0 is an audio frame
    rows = sample_rows(codes, text, meta)
    assert not rows.target_mask[0] and rows.target_mask[1:].all()


def test_sample_rows_rejects_lengths_that_disagree():
    codes, text, meta = make_sample(3, [(4, 3, True)])
    with pytest.raises(ValueError, match="do not match"):
        sample_rows(codes[:, :2], text, meta)


@pytest.fixture(scope="module")
def packed():
    specs = [[(4, 6, True)], [(3, 2, False), (5, 9, True)], [(6, 11, True)], [(2, 3, True)], [(7, 5, True)]]
    samples = [make_sample(10 + i, turns) for i, turns in enumerate(specs)]
    rows = [sample_rows(*s) for s in samples]
    batch = collate([[rows[0], rows[1]], [rows[2], rows[3], rows[4]]], [s[2]["id"] for s in samples], pad_multiple=8)
    return samples, rows, batch


def test_collate_positions_doc_ids_and_padding(packed):
    _, rows, batch = packed
    lengths = [len(r) for r in rows]
    first, second = lengths[0] + lengths[1], lengths[2] + lengths[3] + lengths[4]
    s = -(-max(first, second) // 8) * 8
    assert batch.tokens.shape == (2, s, K + 1) and s - 8 < max(first, second) <= s
    assert batch.num_samples == 5 and batch.num_rows == first + second
    assert batch.num_frames == sum(int(r.target_mask.sum()) for r in rows)
    expected_pos = torch.cat([torch.arange(lengths[0]), torch.arange(lengths[1]), torch.arange(s - first)])
    assert torch.equal(batch.input_pos[0], expected_pos)
    expected_doc = torch.cat([torch.full((n,), d) for d, n in enumerate([lengths[0], lengths[1], s - first])])
    assert torch.equal(batch.doc_ids[0], expected_doc)
    assert not batch.mask[0, first:].any() and not batch.target_mask[0, first:].any()
    assert torch.equal(batch.target_mask[0, lengths[0] : first], rows[1].target_mask)


def test_packed_samples_never_attend_to_each_other(packed, sharp_micro_model):
    # The model on a collated batch: editing one row of the middle sample of the second sequence
    # changes the predictions of that sample from that row on, and nothing else (no other sample, no earlier row).
    _, rows, batch = packed
    every_row = torch.ones_like(batch.target_mask)

    @torch.no_grad()
    def predictions(tokens):  # [B, S-1, V]: at index t, the codebook-0 logits of the state at row t
        out = sharp_micro_model(tokens, batch.mask, every_row, input_pos=batch.input_pos, doc_ids=batch.doc_ids)
        return out.c0_logits.view(tokens.shape[0], tokens.shape[1] - 1, -1)

    edit = len(rows[2]) + 2  # the third row of sample 3, second in its sequence
    edited = batch.tokens.clone()
    edited[1, edit] = (edited[1, edit] + 1) % 1000
    changed = (predictions(edited) - predictions(batch.tokens)).abs().amax(-1) > 1e-6
    expected = torch.zeros_like(changed)
    expected[1, edit:] = batch.doc_ids[1, edit:-1] == 1
    assert expected.sum() >= 2
    assert torch.equal(changed, expected)


def test_packed_loss_equals_sum_of_per_sample_losses(packed, sharp_micro_model):
    _, rows, batch = packed
    model = sharp_micro_model

    def summed_loss(out):
        c0 = F.cross_entropy(out.c0_logits, out.c0_targets, reduction="sum")
        dec = F.cross_entropy(out.decoder_logits.flatten(0, 1), out.decoder_targets.flatten(), reduction="sum")
        return c0, dec

    with torch.no_grad():
        c0, dec = summed_loss(
            model(batch.tokens, batch.mask, batch.target_mask, input_pos=batch.input_pos, doc_ids=batch.doc_ids)
        )
        parts = [summed_loss(model(r.tokens[None], r.mask[None], r.target_mask[None])) for r in rows]
    assert torch.allclose(c0, sum(p[0] for p in parts), rtol=1e-5)
    assert torch.allclose(dec, sum(p[1] for p in parts), rtol=1e-5)
    # The check has teeth: without doc ids the packed samples see each other and the loss moves.
    with torch.no_grad():
        leaky, _ = summed_loss(model(batch.tokens, batch.mask, batch.target_mask, input_pos=batch.input_pos))
    assert not torch.allclose(leaky, c0, rtol=1e-3)


def test_batch_to_moves_every_tensor(packed):
    _, _, batch = packed
    moved = batch.to("meta")
    assert all(
        t.device.type == "meta" for t in (moved.tokens, moved.mask, moved.target_mask, moved.input_pos, moved.doc_ids)
    )
    assert moved.num_rows == batch.num_rows and moved.sample_ids == batch.sample_ids
