"""Load, save and convert CSM checkpoints: hub ids or local paths, original or transformers layout.

Layouts read (detected from the files; docs/architecture.md, "Checkpoint layouts"):
- original: `config.json` holding exactly the `ModelArgs` fields + `model.safetensors`, or `ckpt.pt`
  (a plain state dict; the first release had no config.json beside it, which means csm-1b);
- transformers: `config.json` with `model_type: "csm"` + `model.safetensors`, or shards listed in
  `model.safetensors.index.json`.
Saving writes either layout; the original one is what the reference `Model.from_pretrained(dir)`
(a PyTorchModelHubMixin) reads: `config.json` + `model.safetensors`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

import attrs
import torch
from safetensors.torch import load_file, save_file

from csm_adapt.errors import CheckpointError, ConfigError
from csm_adapt.files import chmod_like_new_file
from csm_adapt.model.config import MODEL_CONFIGS, ModelArgs
from csm_adapt.model.csm import CSM
from csm_adapt.model.sources import is_local
from csm_adapt.model.transformers_layout import from_transformers, to_transformers

CONFIG = "config.json"
# The tokenizer and codec a checkpoint was trained with, written beside the weights by csm-adapt
# (see model/synthesizer.py); Sesame's loader and transformers ignore it.
FRONTEND_FILE = "csm_adapt.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
LEGACY_WEIGHTS = "ckpt.pt"

Layout = Literal["original", "transformers"]


def build_model(name_or_args: str | ModelArgs, *, seed: int = 0, device="cpu", dtype=torch.float32) -> CSM:
    """A randomly initialised model of a named config (`MODEL_CONFIGS`) for tests and the demo, in eval mode."""
    if isinstance(name_or_args, str):
        if name_or_args not in MODEL_CONFIGS:
            raise ConfigError(f"unknown model config {name_or_args!r}; known: {sorted(MODEL_CONFIGS)}")
        name_or_args = MODEL_CONFIGS[name_or_args]
    with torch.random.fork_rng(devices=[]):  # the same weights for a seed, without touching the caller's RNG
        torch.manual_seed(seed)
        model = CSM(name_or_args)
        model.init_weights()
    return model.to(device=device, dtype=dtype).eval()


def load_model(source: str | Path, *, device="cpu", dtype=torch.float32) -> CSM:
    """A CSM from a hub id (`sesame/csm-1b`), a checkpoint directory or a weights file, in eval mode."""
    state, args, weights_file = _read_checkpoint(_resolve(source))
    _check_tensors(state, args, weights_file)
    with torch.device("meta"):
        model = CSM(args)
    # Cast tensor by tensor and assign into the meta model: the weights are never held twice.
    state = {name: state.pop(name).to(device=device, dtype=dtype) for name in list(state)}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def save_model(
    model: CSM, directory: str | Path, *, layout: Layout = "original", dtype: torch.dtype | None = torch.float32
) -> Path:
    """Write `config.json` + `model.safetensors` in the original or the transformers layout.

    fp32 by default, as CSM-1B was released; `dtype=None` keeps the model's dtype. Each file is
    written beside its target and moved into place with os.replace, weights before config, so a
    kill mid-save leaves the previous checkpoint's files whole. Other files in `directory` stay.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to("cpu", dtype or t.dtype).contiguous() for name, t in model.state_dict().items()}
    if layout == "original":
        config = model.args.to_dict()
    elif layout == "transformers":
        state, config = to_transformers(state, model.args)
    else:
        raise ValueError(f"layout must be 'original' or 'transformers', got {layout!r}")
    # transformers refuses safetensors files without the format metadata.
    _write_atomic(directory / WEIGHTS, lambda path: save_file(state, path, metadata={"format": "pt"}))
    _write_atomic(directory / CONFIG, lambda path: Path(path).write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def convert(
    source: str | Path, out_dir: str | Path, *, to: Literal["transformers", "sesame"], dtype=torch.float32
) -> Path:
    """Rewrite a checkpoint in the transformers layout or Sesame's original one.

    The tokenizer/codec record (`csm_adapt.json`) goes along, so the converted checkpoint still
    generates with the tokenizer and codec it was trained with.
    """
    if to not in ("transformers", "sesame"):
        raise ValueError(f"to must be 'transformers' or 'sesame', got {to!r}")
    path = _resolve(source)
    model = load_model(path, dtype=dtype)
    out = save_model(model, out_dir, layout="transformers" if to == "transformers" else "original", dtype=dtype)
    record = (path if path.is_dir() else path.parent) / FRONTEND_FILE
    if record.is_file():
        _write_atomic(out / FRONTEND_FILE, lambda tmp: shutil.copyfile(record, tmp))
    return out


def _write_atomic(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    chmod_like_new_file(Path(tmp))  # mkstemp makes 0600; checkpoints get the umask's mode, like any file
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def resolve_checkpoint(source: str | Path) -> Path:
    """A local path as it is; a hub id downloaded (or found in the cache) with only the files we read
    (config, weights of the layout found, and the csm_adapt.json record if there is one)."""
    return _resolve(source)


def _resolve(source: str | Path) -> Path:
    """See resolve_checkpoint."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if isinstance(source, Path) or is_local(source):
        raise CheckpointError(f"{source}: no such checkpoint file or directory (nor a hub id like 'owner/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        # Config first, so that only the weights of the layout found are fetched (not ckpt.pt and
        # model.safetensors both). Offline (HF_HUB_OFFLINE=1) both calls return the cached snapshot.
        snapshot = Path(snapshot_download(source, allow_patterns=[CONFIG, WEIGHTS_INDEX, FRONTEND_FILE]))
        weights = [WEIGHTS, "model-*-of-*.safetensors"] if (snapshot / CONFIG).exists() else [LEGACY_WEIGHTS]
        return Path(snapshot_download(source, allow_patterns=weights))
    except (HfHubHTTPError, LocalEntryNotFoundError) as e:
        raise CheckpointError(f"{source}: cannot fetch from the Hugging Face hub: {e}") from None


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], ModelArgs, Path]:
    """State dict in original names, its config, and the file named in errors about its tensors."""
    directory = path if path.is_dir() else path.parent
    config_path = directory / CONFIG
    if path.is_file() and path.suffix not in (".safetensors", ".pt", ".pth"):
        raise CheckpointError(f"{path}: not a CSM weights file (expected a checkpoint directory, .safetensors or .pt)")
    if not config_path.exists():
        legacy = path if path.is_file() and path.suffix != ".safetensors" else directory / LEGACY_WEIGHTS
        if not legacy.exists():
            raise CheckpointError(
                f"{directory}: not a CSM checkpoint: expected {CONFIG} with {WEIGHTS}, or {LEGACY_WEIGHTS}"
            )
        # The first CSM-1B release shipped ckpt.pt alone.
        return _load_torch(legacy), MODEL_CONFIGS["csm-1b"], legacy

    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path}: not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")

    if "model_type" in config:
        if config["model_type"] != "csm":
            raise CheckpointError(
                f"{config_path}: model_type {config['model_type']!r} is not a CSM checkpoint (expected 'csm' "
                f"for the transformers layout, or the original config keys {[f.name for f in attrs.fields(ModelArgs)]})"
            )
        weights_file = path if path.is_file() else _transformers_weights(directory)
        hf_state = _load_safetensors(weights_file)
        try:
            state, args = from_transformers(hf_state, config)
        except CheckpointError as e:
            raise CheckpointError(f"{config_path}: {e}") from None
        return state, args, weights_file

    try:
        args = ModelArgs.from_dict(config, source=str(config_path))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if path.is_file():
        weights_file = path
    elif (directory / WEIGHTS).exists():
        weights_file = directory / WEIGHTS
    elif (directory / LEGACY_WEIGHTS).exists():
        weights_file = directory / LEGACY_WEIGHTS
    else:
        raise CheckpointError(f"{directory}: has {CONFIG} but neither {WEIGHTS} nor {LEGACY_WEIGHTS}")
    load = _load_safetensors if weights_file.suffix == ".safetensors" else _load_torch
    return load(weights_file), args, weights_file


def _transformers_weights(directory: Path) -> Path:
    # transformers itself prefers the single file over an index, so a stale index never wins.
    for name in (WEIGHTS, WEIGHTS_INDEX):
        if (directory / name).exists():
            return directory / name
    raise CheckpointError(f"{directory}: has a transformers {CONFIG} but neither {WEIGHTS} nor {WEIGHTS_INDEX}")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: not a safetensors index (expected a 'weight_map' object): {e}") from None
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path.parent / shard).exists():
                raise CheckpointError(f"{path}: lists shard {shard}, which is missing")
            state.update(_load_safetensors(path.parent / shard))
        return state
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError for corrupt files
        raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from None


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a torch.save zip file (a plain pickle, or not a checkpoint at all); csm-adapt never "
            "loads pickles, which can run code: re-save it with torch.save from a trusted environment"
        )
    try:
        # mmap: tensors are paged in as they are cast and assigned, not all read up front.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch.load raises many types for non-checkpoints
        raise CheckpointError(f"{path}: cannot read as a PyTorch state dict: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a plain state dict of tensors")
    return state


def _check_tensors(state: dict[str, torch.Tensor], args: ModelArgs, weights_file: Path) -> None:
    """Every name and shape must match the config's model before anything is loaded."""
    with torch.device("meta"):
        expected = {name: tuple(p.shape) for name, p in CSM(args).state_dict().items()}
    where = f"{weights_file} (config {args.backbone_flavor}/{args.decoder_flavor})"
    for name, shape in expected.items():
        if name not in state:
            raise CheckpointError(f"{where}: missing tensor {name!r} of shape {shape}")
        if tuple(state[name].shape) != shape:
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {tuple(state[name].shape)}, the config expects {shape}"
            )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        name = unexpected[0]
        raise CheckpointError(
            f"{where}: unexpected tensor {name!r} of shape {tuple(state[name].shape)}"
            f" ({len(unexpected)} unexpected in all); a CSM checkpoint holds only the model's parameters"
        )
