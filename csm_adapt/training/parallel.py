"""Data parallelism: DDP by default, FSDP2 (`fully_shard`) as an option; full state dicts for saving."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from csm_adapt.model.csm import CSM
from csm_adapt.training.distributed import Dist

# Whole (unsharded) tensors on the CPU: the same checkpoint whatever the parallelism that wrote it.
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def wrap(model: CSM, strategy: str, d: Dist) -> nn.Module:
    if not d.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in [*model.backbone.layers, *model.decoder.layers]:
            fully_shard(layer)
        return fully_shard(model)
    # device_ids=None: the model is already on its device, and DDP must not move the CPU index masks
    # of the forward's inputs there (CSM.forward would then wait on the device to build indices).
    return DistributedDataParallel(model, device_ids=None)


def unwrap(model: nn.Module) -> CSM:
    return model.module if isinstance(model, DistributedDataParallel) else model


def full_model(model: nn.Module) -> CSM | None:
    """The whole model as a plain CSM, for saving. Under FSDP every rank must call this (it gathers)
    and only rank 0 gets the model (the others get None)."""
    plain = unwrap(model)
    if not any(hasattr(p, "full_tensor") for p in plain.parameters()):
        return plain
    state = get_model_state_dict(plain, options=_FULL)
    if not state:  # cpu_offload gathers the full tensors on rank 0 only
        return None
    with torch.device("meta"):
        full = CSM(plain.args)
    full.load_state_dict(state, assign=True)
    return full


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return get_optimizer_state_dict(unwrap(model), optimizer, options=_FULL)


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict | None, optim_state: dict
) -> None:
    """`model_state` None: the weights are in place already (an adapter loaded its own)."""
    if model_state is not None:
        set_model_state_dict(unwrap(model), model_state, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(unwrap(model), optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
