"""What a recipe's model holds, counted exactly: parameter bytes (trainable and frozen, by dtype),
gradient and optimizer-state bytes, and per-linear facts the activation model needs.

The model is built on the meta device and the recipe's adapter applied to it, so the counts come
from the same code that trains (any adapter plugin, the frozen-dtype cast), without allocating a
byte. A tensor subclass (QLoRA's NF4 weights) is counted by the tensors it is made of, which torchao
lays out on the meta device as it would on a real one.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import torch
from torch import nn

from csm_adapt.config.schema import AdapterRef
from csm_adapt.model.config import ModelArgs
from csm_adapt.model.csm import CSM

# torchao's 8-bit AdamW: block-wise uint8 codes with one fp32 scale per block and a 256-entry fp32
# code map per state tensor; tensors under 4096 values (or not a multiple of the block) keep fp32
# moments (torchao/optim/adam.py, _new_buffer).
ADAMW8BIT_BLOCK = 256
ADAMW8BIT_MIN_SIZE = 4096


@attrs.frozen
class LinearFacts:
    """One linear layer as the activation model sees it."""

    in_features: int
    out_features: int
    trains_weight: bool  # the base weight receives a gradient (full finetuning)
    weight_dtype: str  # "float32", "bfloat16", "nf4"
    lora_rank: int = 0  # 0: no LoRA branch
    dora: bool = False
    dropout: bool = False

    @property
    def weight_numel(self) -> int:
        return self.in_features * self.out_features


@attrs.frozen
class ModelFacts:
    args: ModelArgs
    # Bytes by dtype name ("float32", "bfloat16", "nf4", ...) of trainable and frozen parameters.
    trainable: dict[str, int]
    frozen: dict[str, int]
    trainable_numel: int
    frozen_numel: int
    gradient_bytes: int  # one gradient per trainable parameter, in its dtype
    largest_gradient: int  # bytes of the largest single gradient (an accumulation temporary)
    trainable_numels: dict[str, int]  # by parameter name
    linears: dict[str, LinearFacts]  # by module name: backbone.layers.0.attn.q_proj, projection, ...

    def trains_any(self, prefix: str) -> bool:
        return any(name == prefix or name.startswith(prefix + ".") for name in self.trainable_numels)

    @property
    def weight_bytes(self) -> int:
        return sum(self.trainable.values()) + sum(self.frozen.values())


def model_facts(args: ModelArgs, adapter: AdapterRef | None, frozen_dtype: str = "fp32") -> ModelFacts:
    """Build `args` on the meta device, apply `adapter` as training does, and count."""
    from csm_adapt.training.adapters import apply_adapter

    with torch.device("meta"):
        model = CSM(args)
    if adapter is None:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        apply_adapter(model, adapter, torch.bfloat16 if frozen_dtype == "bf16" else None)
    return _count(model, args)


def _count(model: nn.Module, args: ModelArgs) -> ModelFacts:
    trainable: dict[str, int] = {}
    frozen: dict[str, int] = {}
    numels: dict[str, int] = {}
    counts = [0, 0]
    for name, p in model.named_parameters():
        kind, size = _dtype_and_bytes(p)
        table = trainable if p.requires_grad else frozen
        table[kind] = table.get(kind, 0) + size
        counts[0 if p.requires_grad else 1] += p.numel()
        if p.requires_grad:
            numels[name] = p.numel()
    grads = [n * 4 for n in numels.values()]  # trainable parameters are fp32 (master weights)
    return ModelFacts(
        args=args,
        trainable=trainable,
        frozen=frozen,
        trainable_numel=counts[0],
        frozen_numel=counts[1],
        gradient_bytes=sum(grads),
        largest_gradient=max(grads, default=0),
        trainable_numels=numels,
        linears=dict(_linears(model)),
    )


def _dtype_and_bytes(p: torch.Tensor) -> tuple[str, int]:
    """A tensor's dtype name and bytes; a tensor subclass (NF4) by its class name and inner tensors."""
    data = p.data if isinstance(p, nn.Parameter) else p
    if type(data) is not torch.Tensor and hasattr(data, "__tensor_flatten__"):
        names, _ = data.__tensor_flatten__()
        # Storage bytes: an inner tensor may be a view of a larger buffer, which stays allocated.
        inner = sum(getattr(data, name).untyped_storage().nbytes() for name in names)
        return "nf4" if type(data).__name__ == "NF4Tensor" else type(data).__name__, inner
    return str(p.dtype).removeprefix("torch."), p.numel() * p.element_size()


def _linears(model: nn.Module) -> Iterator[tuple[str, LinearFacts]]:
    """Every module with a 2-D `weight` used as x @ W.T: nn.Linear and adapter wrappers of it."""
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or isinstance(module, nn.Embedding):
            continue
        lora_a = getattr(module, "lora_A", None)
        dropout = getattr(module, "dropout", None)
        kind, _ = _dtype_and_bytes(weight)
        yield (
            name,
            LinearFacts(
                in_features=weight.shape[1],
                out_features=weight.shape[0],
                trains_weight=weight.requires_grad,
                weight_dtype=kind,
                lora_rank=lora_a.shape[0] if isinstance(lora_a, torch.Tensor) else 0,
                dora=getattr(module, "lora_magnitude", None) is not None,
                dropout=isinstance(dropout, nn.Dropout),
            ),
        )


def optimizer_state_bytes(facts: ModelFacts, optimizer: str) -> int:
    """Bytes of the optimizer's state once it has stepped: both Adam moments and the step count."""
    total = 0
    for n in facts.trainable_numels.values():
        if optimizer == "adamw8bit" and n >= ADAMW8BIT_MIN_SIZE and n % ADAMW8BIT_BLOCK == 0:
            total += 2 * (n + (n // ADAMW8BIT_BLOCK) * 4 + 256 * 4)
        else:
            total += 2 * n * 4
        total += 4  # the step count, a fp32 scalar tensor per parameter
    return total
