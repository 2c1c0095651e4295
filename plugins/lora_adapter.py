"""The built-in adapters: `lora` (LoRA, rsLoRA, DoRA) and `qlora` (the same over a frozen NF4 base).

Our own small implementation rather than PEFT's (docs/architecture.md, "Adapters"): a targeted
`nn.Linear` is replaced by a `LoRALinear` that keeps the base tensor under the same name
(`...q_proj.weight`) and adds `lora_A`, `lora_B` (and DoRA's `lora_magnitude`) beside it, so
checkpoints keep the original CSM names and merging gives back a plain CSM. QLoRA stores the frozen
base weights as torchao's `NF4Tensor` (4-bit NormalFloat with double quantisation of the block
scales), dequantised to the compute dtype in the forward pass.
"""

from __future__ import annotations

import fnmatch
import math

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from csm_adapt import hookimpl
from csm_adapt.errors import ConfigError
from csm_adapt.plugin_api import Adapter

# Attention and MLP projections of both transformers (module names, fnmatch globs: `*` crosses dots).
DEFAULT_TARGETS = (
    "*.layers.*.attn.q_proj",
    "*.layers.*.attn.k_proj",
    "*.layers.*.attn.v_proj",
    "*.layers.*.attn.output_proj",
    "*.layers.*.mlp.w1",
    "*.layers.*.mlp.w2",
    "*.layers.*.mlp.w3",
)


def _positive(instance, attribute, value) -> None:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}", attribute)


def _dropout(instance, attribute, value) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"must be in [0, 1), got {value}", attribute)


@attrs.frozen(kw_only=True)
class LoraOptions:
    rank: int = attrs.field(default=16, validator=_positive)
    alpha: float = attrs.field(default=32.0, validator=_positive)  # scaling = alpha / rank (rsLoRA: / sqrt(rank))
    dropout: float = attrs.field(default=0.0, validator=_dropout)  # on the LoRA branch's input
    rslora: bool = False
    dora: bool = False  # weight-decomposed LoRA: a trained magnitude per output row
    # Linear modules that get LoRA, as globs over module names (`backbone.layers.3.attn.q_proj`,
    # `projection`, `codebook0_head`).
    targets: tuple[str, ...] = DEFAULT_TARGETS
    # Parameters trained fully beside the LoRA weights (PEFT's modules_to_save), as globs over module
    # or parameter names: "text_embeddings" for a new language, "codebook0_head", "audio_head", ...
    modules_to_save: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class QloraOptions(LoraOptions):
    # NF4 quantisation blocks: values per absmax scale, and scales per (8-bit) second-level scale.
    block_size: int = attrs.field(default=64, validator=_positive)
    scaler_block_size: int = attrs.field(default=256, validator=_positive)


class LoRALinear(nn.Module):
    """`weight` (frozen, the base's own tensor) + scaling * B A, optionally DoRA-normalised per row."""

    def __init__(self, base: nn.Linear, options: LoraOptions):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.weight.requires_grad_(False)
        device = base.weight.device
        # Adapter weights stay fp32 whatever the base's dtype: they are the trained (master) weights.
        self.lora_A = nn.Parameter(torch.empty(options.rank, self.in_features, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as PEFT and the LoRA paper's code
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, options.rank, device=device))  # starts as a no-op
        self.scaling = options.alpha / (math.sqrt(options.rank) if options.rslora else options.rank)
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.lora_magnitude = nn.Parameter(self.base_weight().norm(dim=1)) if options.dora else None

    def base_weight(self) -> torch.Tensor:
        """The frozen base weight in fp32 (dequantised when it is NF4)."""
        w = self.weight
        return (w.get_original_weight() if _is_nf4(w) else w.detach()).float()

    def delta(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _is_nf4(self.weight):
            from torchao.dtypes.nf4tensor import linear_nf4

            # linear_nf4 dequantises to the input's dtype; autocast does not see through it.
            if torch.is_autocast_enabled(x.device.type):
                x = x.to(torch.get_autocast_dtype(x.device.type))
            base = linear_nf4(x, self.weight)
        else:
            base = F.linear(x, self.weight)
        # Outside autocast (generation over a bf16 base) the fp32 adapter follows the input's dtype.
        a, b = (
            (self.lora_A, self.lora_B)
            if x.dtype == self.lora_A.dtype
            else (self.lora_A.to(x.dtype), self.lora_B.to(x.dtype))
        )
        lora = F.linear(F.linear(self.dropout(x), a), b) * self.scaling
        if self.lora_magnitude is None:
            return base + lora
        # DoRA (Liu et al. 2024): m * (W + dW) / ||W + dW||_row, the norm detached as the paper advises.
        norm = (self.base_weight() + self.delta()).norm(dim=1).detach()
        return (self.lora_magnitude / norm).to(base.dtype) * (base + lora)

    def merged(self) -> nn.Linear:
        """A plain Linear computing the same function (without dropout), in fp32."""
        with torch.no_grad():
            w = self.base_weight() + self.delta()
            if self.lora_magnitude is not None:
                w = w * (self.lora_magnitude.float() / w.norm(dim=1)).unsqueeze(1)
            linear = nn.Linear(self.in_features, self.out_features, bias=False, device=w.device)
            linear.weight.copy_(w)
        linear.weight.requires_grad_(False)
        return linear


def _is_nf4(t: torch.Tensor) -> bool:
    return type(t).__name__ == "NF4Tensor"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class Lora(Adapter):
    KIND = "lora"

    def apply(self, model: nn.Module) -> None:
        if any(isinstance(m, LoRALinear) for m in model.modules()):
            raise ConfigError(f"adapter: {self.KIND} is already applied to this model")
        targets = self._targets(model)
        saved = self._saved(model)
        both = sorted(p for p in saved if p.rpartition(".")[0] in targets)
        if both:
            raise ConfigError(f"adapter: {both[0]} is both a LoRA target and in modules_to_save; choose one")
        for p in model.parameters():
            p.requires_grad_(False)
        for name in targets:
            _set_module(model, name, self.wrap(model.get_submodule(name)))
        params = dict(model.named_parameters())
        for name in saved:
            params[name].requires_grad_(True)

    def wrap(self, linear: nn.Linear) -> LoRALinear:
        return LoRALinear(linear, self.options)

    def merge(self, model: nn.Module) -> None:
        for name, module in list(model.named_modules()):
            if isinstance(module, LoRALinear):
                _set_module(model, name, module.merged())
        for p in model.parameters():
            p.requires_grad_(False)

    def _targets(self, model: nn.Module) -> list[str]:
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        chosen = []
        for pattern in self.options.targets:
            hits = [n for n in linears if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ConfigError(
                    f'adapter.targets: "{pattern}" matches no linear module; they are named like '
                    f"{', '.join(linears[:3])}, projection, codebook0_head"
                )
            chosen += [n for n in hits if n not in chosen]
        return chosen

    def _saved(self, model: nn.Module) -> list[str]:
        names = [name for name, _ in model.named_parameters()]
        chosen = []
        for pattern in self.options.modules_to_save:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, pattern + ".*")]
            if not hits:
                raise ConfigError(
                    f'adapter.modules_to_save: "{pattern}" matches no parameter; e.g. text_embeddings, '
                    "audio_embeddings, codebook0_head, audio_head, projection"
                )
            chosen += [n for n in hits if n not in chosen]
        return chosen


class Qlora(Lora):
    KIND = "qlora"

    def wrap(self, linear: nn.Linear) -> LoRALinear:
        try:
            from torchao.dtypes.nf4tensor import to_nf4
        except ImportError:
            raise ConfigError("adapter qlora needs torchao: pip install 'csm-adapt[lowmem]'") from None
        module = LoRALinear(linear, self.options)
        w = module.weight.detach()
        block = self.options.block_size
        if w.numel() % block:
            raise ConfigError(f"adapter.block_size: {block} does not divide a {tuple(w.shape)} weight")
        # Second-level blocks must divide the number of first-level ones (small test models have few).
        scalers = math.gcd(self.options.scaler_block_size, w.numel() // block)
        # Quantised from bf16, as QLoRA does: the compute dtype is bf16.
        module.weight = nn.Parameter(to_nf4(w.to(torch.bfloat16), block, scalers), requires_grad=False)
        return module


@hookimpl
def register_adapters(register):
    register("lora", Lora, options=LoraOptions)
    register("qlora", Qlora, options=QloraOptions)


def peft_export(weights: dict[str, torch.Tensor], options: LoraOptions, args, base: str | None) -> tuple[dict, dict]:
    """Our LoRA weights -> PEFT's `adapter_model.safetensors` tensors and `adapter_config.json`, for
    transformers' CSM layout (its names, and the q/k row order its rotate-half RoPE needs)."""
    from csm_adapt.model.transformers_layout import hf_name, rows_to_transformers, to_transformers

    def hf_module(module: str) -> str:
        return hf_name(f"{module}.weight").removesuffix(".weight")

    prefix = "base_model.model."
    state, targets, saved = {}, [], []
    for name, tensor in weights.items():
        module, _, kind = name.rpartition(".")
        if kind in ("lora_A", "lora_B", "lora_magnitude"):
            if hf_module(module) not in targets:
                targets.append(hf_module(module))
            if kind != "lora_A":
                tensor = rows_to_transformers(f"{module}.weight", tensor, args)
            key = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "lora_magnitude": "lora_magnitude_vector"}
            state[f"{prefix}{hf_module(module)}.{key[kind]}"] = tensor.contiguous()
        elif name == "audio_embeddings.weight":
            # transformers ties this table to the backbone's; PEFT would train only one of the twins.
            raise ConfigError("a LoRA that trains audio_embeddings cannot be exported to PEFT (a tied table)")
        else:
            [(hf, converted)] = to_transformers({name: tensor}, args)[0].items()
            saved.append(hf.rpartition(".")[0])
            state[prefix + hf] = converted.contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base,
        "r": options.rank,
        "lora_alpha": options.alpha,
        "lora_dropout": options.dropout,
        "use_rslora": options.rslora,
        "use_dora": options.dora,
        "target_modules": targets,  # full names: the Mimi codec inside transformers' model has q_proj too
        "modules_to_save": saved or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    return state, config


@hookimpl
def register_commands(cli):
    import click

    @cli.command("export-peft")
    @click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False))
    @click.argument("out_dir", type=click.Path(file_okay=False))
    def export_peft(adapter_dir, out_dir):
        """Write a lora/qlora adapter in PEFT's format for transformers' CSM layout.

        OUT_DIR gets adapter_config.json + adapter_model.safetensors, which
        `PeftModel.from_pretrained(CsmForConditionalGeneration..., OUT_DIR)` loads over the base model
        converted with `csm-adapt convert BASE DIR --to transformers`. A qlora adapter was trained over
        the NF4-rounded base: over the full-precision base it is close, not identical.

        Example: csm-adapt export-peft runs/french-lora/checkpoints/final french-peft
        """
        import json
        from pathlib import Path

        from safetensors.torch import save_file

        from csm_adapt.model.config import MODEL_CONFIGS
        from csm_adapt.training.adapters import read_spec, read_weights

        spec = read_spec(Path(adapter_dir))
        if not isinstance(spec.ref.options, LoraOptions):
            raise ConfigError(f"{adapter_dir}: a {spec.ref.name} adapter, not lora/qlora: no PEFT format for it")
        args = MODEL_CONFIGS[spec.base.config]
        state, config = peft_export(read_weights(Path(adapter_dir)), spec.ref.options, args, spec.base.checkpoint)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, out / "adapter_model.safetensors", metadata={"format": "pt"})
        (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        click.echo(f"wrote {out} (PEFT LoRA for the transformers layout, {len(config['target_modules'])} modules)")
