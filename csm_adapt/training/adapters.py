"""Adapters on a model, and adapter directories: `adapter.safetensors` + `adapter.json`.

`adapter.safetensors` holds what the adapter trains (its own weights and any base parameters it
trains fully), under their names in the adapted model. `adapter.json` says which adapter, with
which options, over which base model, and which local plugins provide it, so that `merge` and
`generate --adapter` rebuild the same model from the directory alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import torch
from safetensors.torch import load_file, save_file

from csm_adapt.config.schema import AdapterRef, Recipe
from csm_adapt.config.structure import to_dict
from csm_adapt.errors import CheckpointError, ConfigError, CsmAdaptError
from csm_adapt.model.checkpoint import build_model, load_model
from csm_adapt.model.csm import CSM
from csm_adapt.training.optim import set_trainable

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
FORMAT = 1


@attrs.frozen
class BaseModel:
    """The frozen model an adapter was trained on: a checkpoint, or `config`'s random init with `seed`."""

    config: str
    checkpoint: str | None = None
    seed: int = 0

    @classmethod
    def of(cls, recipe: Recipe) -> BaseModel:
        return cls(recipe.model.config, recipe.model.checkpoint, recipe.train.seed)

    def load(self, device="cpu", dtype=torch.float32) -> CSM:
        if self.checkpoint:
            return load_model(self.checkpoint, device=device, dtype=dtype)
        return build_model(self.config, seed=self.seed, device=device, dtype=dtype)


@attrs.frozen
class AdapterSpec:
    """What `adapter.json` records: the adapter (name + options), its base, and the local plugins needed."""

    ref: AdapterRef
    base: BaseModel
    plugins: tuple[str, ...] = ()

    def write(self, directory: Path, model: torch.nn.Module) -> None:
        """The adapter's weights and config into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            name: t.detach().to("cpu").contiguous().clone() for name, t in adapter_of(model).state_dict(model).items()
        }
        save_file(state, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        config = {
            "format": FORMAT,
            "adapter": {"name": self.ref.name, **to_dict(self.ref.options)},
            "base": to_dict(self.base),
            "plugins": list(self.plugins),
        }
        (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def decide_trainable(recipe: Recipe, model: CSM, *, distributed: bool = False) -> AdapterSpec | None:
    """What trains, as the loop (and the memory planner's measurement) decide it: the recipe's
    adapter, else `train.trainable`. Returns the adapter's spec, or None without an adapter."""
    cfg = recipe.train
    if recipe.adapter is None:
        set_trainable(model, cfg)
        return None
    if distributed and cfg.parallel == "fsdp":
        # FSDP's full-state gathering rebuilds a plain CSM; adapters are small enough for DDP.
        raise ConfigError('an [adapter] trains with train.parallel = "ddp", not "fsdp"')
    apply_adapter(model, recipe.adapter, torch.bfloat16 if cfg.frozen_dtype == "bf16" else None)
    return AdapterSpec(recipe.adapter, BaseModel.of(recipe), recipe.plugins)


def apply_adapter(model: CSM, ref: AdapterRef, frozen_dtype: torch.dtype | None = None) -> None:
    """Apply the adapter `ref` names to `model`; frozen floating-point weights cast to `frozen_dtype`."""
    adapter = ref.create()
    adapter.apply(model)
    model._csm_adapter = adapter  # what adapter_of finds: the adapter that knows this model's extra weights
    if frozen_dtype is not None:
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                # NF4 tensors (QLoRA) are already smaller than any float dtype.
                if not p.requires_grad and p.is_floating_point() and type(p.data).__name__ != "NF4Tensor":
                    setattr(module, name, torch.nn.Parameter(p.detach().to(frozen_dtype), requires_grad=False))


def adapter_of(model: torch.nn.Module):
    adapter = getattr(model, "_csm_adapter", None)
    if adapter is None:
        raise CsmAdaptError("this model has no adapter applied")
    return adapter


def merge_adapter(model: CSM) -> CSM:
    """Fold the applied adapter into the base weights; the model becomes a plain CSM again."""
    adapter_of(model).merge(model)
    del model._csm_adapter
    return model


def is_adapter_dir(directory: Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def read_spec(directory: Path) -> AdapterSpec:
    """`adapter.json` of `directory`, its adapter rebuilt through the plugins (options checked again)."""
    import click

    from csm_adapt.config.recipe import build_plugin_ref
    from csm_adapt.config.structure import from_dict
    from csm_adapt.plugin_engine.manager import load_plugins
    from csm_adapt.plugin_engine.registries import collect

    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory}: not an adapter directory (no {ADAPTER_CONFIG})")
    try:
        config = json.loads(path.read_text())
        if config.get("format") != FORMAT:
            raise CheckpointError(f"{path}: unknown adapter format {config.get('format')!r} (expected {FORMAT})")
        base = from_dict(BaseModel, config["base"], "base")
        plugins = tuple(config.get("plugins", ()))
        registries = collect(load_plugins(plugins), click.Group())
        ref = build_plugin_ref(AdapterRef, registries.adapters, config["adapter"], "adapter")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid adapter config: {e!r}") from None
    except CsmAdaptError as e:
        raise type(e)(f"{path}: {e}") from None
    return AdapterSpec(ref, base, plugins)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = Path(directory) / ADAPTER_WEIGHTS
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise CheckpointError(f"{path}: cannot read adapter weights: {e}") from None


def load_weights(model: CSM, directory: Path) -> None:
    try:
        adapter_of(model).load_state_dict(model, read_weights(directory))
    except ValueError as e:
        raise CheckpointError(f"{directory}: {e}") from None


def load_adapted(
    directory: Path, base: str | Path | None = None, *, device="cpu", dtype=torch.float32
) -> tuple[CSM, AdapterSpec]:
    """The base model (`base`, else the one adapter.json records) with the adapter of `directory` on it."""
    spec = read_spec(directory)
    model = load_model(base, device=device, dtype=dtype) if base is not None else spec.base.load(device, dtype)
    apply_adapter(model, spec.ref)
    load_weights(model, directory)
    return model.eval(), spec
