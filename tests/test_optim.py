"""What trains, the optimizer groups and the learning-rate schedules."""

import math

import pytest
import torch

from csm_adapt.config.schema import TrainConfig
from csm_adapt.model.checkpoint import build_model
from csm_adapt.training.optim import build_optimizer, build_scheduler, lr_multiplier, set_trainable


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "exponential"])
def test_warmup_then_decay_in_optimizer_steps(schedule):
    cfg = TrainConfig(steps=100, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1, decay_rate=0.99)
    values = [lr_multiplier(step, cfg) for step in range(100)]
    assert all(type(v) is float for v in values)  # never a tensor (a community bug)
    assert values[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert values[10] == pytest.approx(1.0)
    # The last step (99) is 89/90 of the way through the decay (the floor would be step 100).
    expected_last = {
        "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)),
        "linear": 0.1 + 0.9 / 90,
        "constant": 1.0,
        "exponential": 0.99**89,
    }[schedule]
    assert values[99] == pytest.approx(expected_last)
    if schedule != "constant":
        assert all(a >= b for a, b in zip(values[10:], values[11:]))
    if schedule == "cosine":
        assert values[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_scheduler_steps_once_per_optimizer_step():
    model = build_model("micro")
    cfg = TrainConfig(steps=20, warmup_steps=4, lr=1e-3)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    seen = []
    for _ in range(6):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


@pytest.mark.parametrize(
    "trainable, freeze_text, trains, frozen",
    [
        ("all", False, ["backbone.layers.0.attn.q_proj.weight", "audio_head", "text_embeddings.weight"], []),
        ("all", True, ["decoder.norm.scale"], ["text_embeddings.weight"]),
        ("backbone", False, ["codebook0_head.weight", "audio_embeddings.weight"], ["decoder.norm.scale", "audio_head"]),
        ("decoder", False, ["projection.weight", "audio_head"], ["backbone.norm.scale", "text_embeddings.weight"]),
    ],
)
def test_what_trains(trainable, freeze_text, trains, frozen):
    model = build_model("micro")
    set_trainable(model, TrainConfig(trainable=trainable, freeze_text_embeddings=freeze_text))
    params = dict(model.named_parameters())
    assert all(params[n].requires_grad for n in trains)
    assert not any(params[n].requires_grad for n in frozen)
    optimizer = build_optimizer(model, TrainConfig())
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}


def test_no_weight_decay_on_norm_scales():
    model = build_model("micro")
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in plain["params"]) and all(p.ndim >= 2 for p in decayed["params"])
    assert optimizer.defaults["fused"] is True
    assert torch.is_tensor(plain["params"][0])


def test_adamw8bit_keeps_8bit_moments_and_learns():
    pytest.importorskip("torchao")
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 64)  # 8192 weights: quantised (torchao keeps tensors < 4096 in fp32)
    cfg = TrainConfig(optimizer="adamw8bit", lr=1e-2, weight_decay=0.0)
    optimizer = build_optimizer(layer, cfg)
    x, y = torch.randn(32, 128), torch.randn(32, 64)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(layer(x), y)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0]
    state = optimizer.state[layer.weight]
    assert type(state["exp_avg"]).__name__ == "OptimState8bit" and state["exp_avg"].codes.dtype == torch.uint8
    assert type(optimizer.state[layer.bias]["exp_avg"]) is torch.Tensor  # 64 values: fp32
