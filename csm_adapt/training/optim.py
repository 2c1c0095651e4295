"""What trains, the optimizer and the learning-rate schedule (counted in optimizer steps)."""

from __future__ import annotations

import math

import torch
from torch import nn

from csm_adapt.config.schema import TrainConfig
from csm_adapt.errors import ConfigError
from csm_adapt.model.csm import CSM

# Which top-level parts of the model each `train.trainable` choice updates.
_PARTS = {
    "all": ("backbone", "decoder", "text_embeddings", "audio_embeddings", "projection", "codebook0_head", "audio_head"),
    "backbone": ("backbone", "text_embeddings", "audio_embeddings", "codebook0_head"),
    "decoder": ("decoder", "projection", "audio_head"),
}


def set_trainable(model: CSM, cfg: TrainConfig) -> None:
    parts = set(_PARTS[cfg.trainable])
    if cfg.freeze_text_embeddings:
        parts.discard("text_embeddings")
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in parts)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused kernels where the device has them) or 8-bit AdamW; no weight decay on norms (1-D scales)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw8bit":
        try:
            from torchao.optim import AdamW8bit
        except ImportError:
            raise ConfigError(
                "train.optimizer = \"adamw8bit\" needs torchao: pip install 'csm-adapt[lowmem]'"
            ) from None
        # Block-wise 8-bit moments (dynamic-tree quantisation, blocks of 256); tensors under 4096
        # values keep fp32 moments, as in bitsandbytes. torchao compiles its step with torch.compile.
        return AdamW8bit(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    # Fused AdamW runs on CPU and CUDA in torch >= 2.4; on CPU it is ~1.6x the foreach step here.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then the chosen decay; a plain float, never a tensor."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "linear":
        return floor + (1 - floor) * (1 - progress)
    if cfg.schedule == "exponential":
        return cfg.decay_rate ** (step - cfg.warmup_steps)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
