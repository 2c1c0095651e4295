"""Loss parts, per-codebook accuracy and the `full` / `amortized` loss strategies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from csm_adapt.config.structure import from_dict
from csm_adapt.errors import ConfigError
from csm_adapt.model.csm import TrainOutput
from csm_adapt.plugin_api import LossParts
from csm_adapt.training.losses import codebook_accuracy, loss_parts
from csm_adapt_plugins.loss_strategies import Amortized, AmortizedOptions, Full, FullOptions

VOCAB = 11


def train_output(n: int, m: int, seed: int = 0) -> TrainOutput:
    g = torch.Generator().manual_seed(seed)
    return TrainOutput(
        c0_logits=torch.randn(n, VOCAB, generator=g, requires_grad=True),
        c0_targets=torch.randint(VOCAB, (n,), generator=g),
        decoder_logits=torch.randn(m, 31, VOCAB, generator=g, requires_grad=True),
        decoder_targets=torch.randint(VOCAB, (m, 31), generator=g),
    )


def target_mask(n_targets: int, shape=(3, 40), seed: int = 1) -> torch.Tensor:
    """`n_targets` scattered True positions (non-targets in between, as context and text rows are)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask.view(-1)[torch.randperm(mask.numel(), generator=g)[:n_targets]] = True
    return mask


def amortized(fraction: float = 1 / 16, weight: float = 0.5) -> Amortized:
    return Amortized(AmortizedOptions(decoder_fraction=fraction, decoder_loss_weight=weight))


def test_loss_parts_are_token_mean_cross_entropies():
    out = train_output(n=7, m=3)
    parts = loss_parts(out)
    assert torch.allclose(parts.c0, F.cross_entropy(out.c0_logits, out.c0_targets))
    per_token = F.cross_entropy(
        out.decoder_logits.reshape(-1, VOCAB), out.decoder_targets.reshape(-1), reduction="none"
    )
    assert torch.allclose(parts.decoder, per_token.mean())
    assert (parts.c0_frames, parts.decoder_frames) == (7, 3)


def test_no_decoder_frames_gives_a_zero_loss_that_still_backpropagates():
    out = train_output(n=5, m=0)
    parts = loss_parts(out)
    assert parts.decoder.item() == 0.0 and parts.decoder_frames == 0
    loss = amortized().combine(parts)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(out.c0_logits.grad).all() and out.c0_logits.grad.abs().sum() > 0
    assert out.decoder_logits.grad is not None  # still in the graph: DDP sees a (zero) gradient


def test_codebook_accuracy_per_codebook():
    out = train_output(n=4, m=2)
    # Make codebook 0 right on 3 of 4 frames, codebook 5 right on 1 of 2, codebook 31 on both.
    c0_logits = torch.zeros(4, VOCAB)
    c0_logits[torch.arange(4), torch.tensor([1, 2, 3, 4])] = 1.0
    decoder_logits = torch.zeros(2, 31, VOCAB)
    decoder_targets = torch.ones(2, 31, dtype=torch.long)
    decoder_logits[:, :, 0] = 1.0  # wrong everywhere...
    decoder_logits[0, 4, 1] = 2.0  # ...except codebook 5 on frame 0
    decoder_logits[:, 30, 1] = 2.0  # and codebook 31 on both frames
    out = TrainOutput(c0_logits, torch.tensor([1, 2, 3, 0]), decoder_logits, decoder_targets)
    acc = codebook_accuracy(out)
    expected = torch.zeros(32)
    expected[0], expected[5], expected[31] = 0.75, 0.5, 1.0
    assert acc.shape == (32,)
    assert torch.equal(acc, expected)


def test_codebook_accuracy_without_decoder_frames():
    acc = codebook_accuracy(train_output(n=3, m=0))
    assert acc.shape == (32,) and torch.isfinite(acc).all() and (acc[1:] == 0).all()


@pytest.mark.parametrize("n_targets, expected", [(1, 1), (5, 1), (15, 1), (16, 1), (40, 2), (56, 4), (120, 8)])
def test_amortized_selects_exactly_the_rounded_fraction_of_targets(n_targets, expected):
    mask = target_mask(n_targets)
    selected = amortized().select_decoder_frames(mask, torch.Generator().manual_seed(0))
    assert selected.dtype == torch.bool and selected.shape == mask.shape
    assert int(selected.sum()) == expected
    assert not (selected & ~mask).any()  # a subset of the targets


def test_amortized_with_no_targets_selects_nothing():
    mask = torch.zeros(2, 9, dtype=torch.bool)
    assert not amortized().select_decoder_frames(mask, torch.Generator()).any()


def test_amortized_redraws_every_call_and_is_reproducible_by_seed():
    mask = target_mask(100)
    strategy = amortized(fraction=0.25)
    g = torch.Generator().manual_seed(3)
    draws = [strategy.select_decoder_frames(mask, g) for _ in range(4)]
    assert all(int(d.sum()) == 25 for d in draws)
    assert len({tuple(d.flatten().tolist()) for d in draws}) == 4
    g_again = torch.Generator().manual_seed(3)
    assert all(torch.equal(strategy.select_decoder_frames(mask, g_again), d) for d in draws)


def test_amortized_draws_uniformly_over_the_targets():
    mask = target_mask(8, shape=(2, 10))
    g = torch.Generator().manual_seed(0)
    counts = sum(amortized(fraction=0.25).select_decoder_frames(mask, g).int() for _ in range(800))
    hits = counts[mask].float()
    assert (counts[~mask] == 0).all()
    assert torch.allclose(hits, torch.full_like(hits, 200.0), rtol=0.2)  # 2 of 8, 800 times: 200 each


def test_full_selects_every_target():
    mask = target_mask(30)
    assert torch.equal(Full(FullOptions()).select_decoder_frames(mask, torch.Generator()), mask)


@pytest.mark.parametrize("strategy_class, options_class", [(Full, FullOptions), (Amortized, AmortizedOptions)])
def test_combine_weights_the_two_parts(strategy_class, options_class):
    parts = LossParts(c0=torch.tensor(2.0), decoder=torch.tensor(6.0), c0_frames=10, decoder_frames=1)
    assert strategy_class(options_class()).combine(parts).item() == pytest.approx(4.0)
    assert strategy_class(options_class(decoder_loss_weight=0.25)).combine(parts).item() == pytest.approx(3.0)
    assert strategy_class(options_class(decoder_loss_weight=0.0)).combine(parts).item() == pytest.approx(2.0)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"decoder_fraction": 0.0}, r"loss.decoder_fraction: must be in \(0, 1\], got 0.0"),
        ({"decoder_fraction": 1.5}, r"loss.decoder_fraction: must be in \(0, 1\], got 1.5"),
        ({"decoder_loss_weight": -0.1}, r"loss.decoder_loss_weight: must be in \[0, 1\], got -0.1"),
        ({"weight": 0.5}, "loss.weight: unknown key"),
    ],
)
def test_options_are_validated_naming_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(AmortizedOptions, table, "loss")


def test_options_defaults():
    options = from_dict(AmortizedOptions, {"decoder_fraction": 1}, "loss")
    assert options == AmortizedOptions(decoder_fraction=1.0, decoder_loss_weight=0.5)
    assert AmortizedOptions().decoder_fraction == 1 / 16
