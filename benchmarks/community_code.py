"""The community's own training code, read at run time from the user's checkouts, to cross-check the baseline.

`train_throughput.py --community-code DIR` expects, under DIR:

- `csm/`: a checkout of SesameAILabs/csm; its `models.py` (Model, ModelArgs, FLAVORS,
  _create_causal_mask; it imports torchtune) is imported as it is;
- `sesame-finetune/`: a checkout of knottwill/sesame-finetune; its `forward(self, tokens, tokens_mask)`
  (utils.py or src/utils.py), the training forward that returns the loss, and its `collate_fn(items)`
  (dataloaders.py, src/data.py or utils/data.py).

Nothing of them is copied into this repository. The two sesame-finetune functions run unchanged (their
source compiled under their own file name), but without executing their modules, which import the
whole training stack at import time (wandb, the Mimi codec, the Llama tokenizer, h5py, a .env file):
the names the two functions use are provided here, and a function that uses another name is refused
with that name, rather than run with a guess.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import numpy as np
import torch

from csm_adapt.model.config import FLAVORS, ModelArgs, TransformerFlavor
from csm_adapt.training.step import autocast

FORWARD_FILES = ("utils.py", "src/utils.py")
COLLATE_FILES = ("dataloaders.py", "src/data.py", "utils/data.py")


class CommunityCodeError(Exception):
    """The checkouts are missing, incomplete, or of a layout this cross-check does not know."""


@attrs.frozen
class CommunityCode:
    models: types.ModuleType  # csm/models.py
    forward: Callable  # forward(self, tokens, tokens_mask) -> loss
    collate_fn: Callable  # collate_fn([{"audio": [K, F], "text": [T]}, ...]) -> (tokens, tokens_mask)
    sources: dict[str, str]  # what was read, from where

    def build_model(self, ours: torch.nn.Module, args: ModelArgs, device: torch.device) -> torch.nn.Module:
        """Their Model in `args`' shape, with their forward bound as sesame-finetune's load_model binds
        it, holding `ours`' weights (their layout is the original one, which ours keeps)."""
        for name in (args.backbone_flavor, args.decoder_flavor):
            self.models.FLAVORS.setdefault(name, _torchtune_flavor(FLAVORS[name]))
        config = self.models.ModelArgs(
            backbone_flavor=args.backbone_flavor, decoder_flavor=args.decoder_flavor,
            text_vocab_size=args.text_vocab_size, audio_vocab_size=args.audio_vocab_size,
            audio_num_codebooks=args.audio_num_codebooks,
        )  # fmt: skip
        model = self.models.Model(config)
        model.forward = types.MethodType(self.forward, model)
        missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
        self.sources["weights"] = (
            "ours"
            if not missing and not unexpected
            else f"partly ours: {len(missing)} missing, {len(unexpected)} extra"
        )
        return model.to(device).train()

    def step_fn(self, ours, cfg, device: torch.device, precision: str, steps: Sequence, clip: float):
        """Their training step over each step's padded micro-batches, as their train.py runs it:
        autocast when `precision` is not fp32, loss / accumulation steps, GradScaler (fp16),
        clip_grad_norm_, AdamW with PyTorch's defaults. Collation is done here, outside the timing."""
        model = self.build_model(ours, ours.args, device)
        collated = {id(step): [self.collate_fn(community_items(batch)) for batch, _ in step.padded] for step in steps}
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

        def run(step, clock) -> torch.Tensor:
            micro = collated[id(step)]
            total = torch.zeros((), device=device)
            for tokens, tokens_mask in micro:
                tokens, tokens_mask = tokens.to(device), tokens_mask.to(device)
                with autocast(device, precision):
                    loss = model(tokens, tokens_mask) / len(micro)
                clock("forward")
                scaler.scale(loss).backward()
                total += loss.detach()
                clock("backward")
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            clock("optimizer")
            return total

        return run


def community_items(batch) -> list[dict[str, torch.Tensor]]:
    """The samples of one padded batch (one sample per sequence) as their dataset yields them:
    {"audio": codes [K, frames] without the EOS frame (their collate_fn appends it), "text": [T]}."""
    k = batch.tokens.shape[-1] - 1
    items = []
    for tokens, mask in zip(batch.tokens, batch.mask):
        audio_rows, text_rows = mask[:, :k].all(-1), mask[:, k] & ~mask[:, :k].any(-1)
        items.append({"audio": tokens[audio_rows][:-1, :k].t().contiguous(), "text": tokens[text_rows, k]})
    return items


def load(root: Path, args: ModelArgs) -> CommunityCode:
    """Reads the checkouts under `root`; raises CommunityCodeError naming what is missing."""
    root = Path(root).expanduser()
    layout = f"expected {root}/csm (SesameAILabs/csm) and {root}/sesame-finetune (knottwill/sesame-finetune)"
    if not root.is_dir():
        raise CommunityCodeError(f"{root} is not a directory; {layout}")
    models_py, finetune = root / "csm" / "models.py", root / "sesame-finetune"
    if not models_py.is_file():
        raise CommunityCodeError(f"{models_py} not found; {layout}")
    if not finetune.is_dir():
        raise CommunityCodeError(f"{finetune} not found; {layout}")
    forward_py = _defining(finetune, FORWARD_FILES, "forward")
    collate_py = _defining(finetune, COLLATE_FILES, "collate_fn")
    collate_fn = _function(
        collate_py, "collate_fn",
        {"torch": torch, "np": np, "List": list, "Dict": dict, "typing": typing,
         "pad_sequence": torch.nn.utils.rnn.pad_sequence, "AUDIO_NUM_CODEBOOKS": args.audio_num_codebooks},
    )  # fmt: skip
    forward_globals = {
        "torch": torch,
        "F": torch.nn.functional,
        "nn": torch.nn,
        "_create_causal_mask": None,
        "Model": None,
    }
    _function(forward_py, "forward", forward_globals)  # refuses unknown names before the slow import
    models = _import_models(models_py)
    forward = _function(
        forward_py,
        "forward",
        forward_globals | {"_create_causal_mask": models._create_causal_mask, "Model": models.Model},
    )
    sources = {"models": str(models_py), "forward": str(forward_py), "collate_fn": str(collate_py)}
    return CommunityCode(models, forward, collate_fn, sources)


def _defining(root: Path, candidates: Sequence[str], name: str) -> Path:
    """The first of `candidates` (under root) that defines a top-level function `name`."""
    for rel in candidates:
        path = root / rel
        if path.is_file() and _function_node(path, name) is not None:
            return path
    raise CommunityCodeError(f"no top-level {name}() in any of {', '.join(str(root / c) for c in candidates)}")


def _function_node(path: Path, name: str) -> ast.FunctionDef | None:
    try:
        tree = ast.parse(path.read_text(), str(path))
    except SyntaxError as e:
        raise CommunityCodeError(f"{path}: cannot parse: {e}") from None
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _function(path: Path, name: str, provided: dict) -> Callable:
    """Compiles the top-level function `name` of `path`, as written, with `provided` as its globals."""
    node = _function_node(path, name)
    if node is None:
        raise CommunityCodeError(f"{path} defines no top-level {name}()")
    missing = sorted(_free_names(node) - provided.keys() - set(dir(builtins)))
    if missing:
        raise CommunityCodeError(
            f"{path}: {name}() uses {', '.join(missing)}, which this cross-check does not provide "
            "(a version of the checkout it does not know)"
        )
    namespace = dict(provided)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace[name]


def _free_names(node: ast.FunctionDef) -> set[str]:
    """Names the function reads that it neither binds nor takes as arguments: its globals."""
    bound = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
    loaded = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (loaded if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, ast.FunctionDef | ast.Lambda) and n is not node:
            bound.update(a.arg for a in ast.walk(n.args) if isinstance(a, ast.arg))
            if isinstance(n, ast.FunctionDef):
                bound.add(n.name)
    return loaded - bound  # annotations count: they are evaluated when the function is defined


def _import_models(models_py: Path) -> types.ModuleType:
    if importlib.util.find_spec("torchtune") is None:
        raise CommunityCodeError(
            f"{models_py} imports torchtune, which is not installed: pip install torchtune torchao "
            "(the community's dependencies, not csm-adapt's)"
        )
    spec = importlib.util.spec_from_file_location("community_csm_models", models_py)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(models_py.parent))  # its own sibling imports
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        raise CommunityCodeError(f"importing {models_py} failed: {e}") from None
    finally:
        sys.path.remove(str(models_py.parent))
    absent = [a for a in ("Model", "ModelArgs", "FLAVORS", "_create_causal_mask") if not hasattr(module, a)]
    if absent:
        raise CommunityCodeError(f"{models_py} has no {', '.join(absent)} (a version this cross-check does not know)")
    return module


def _torchtune_flavor(f: TransformerFlavor) -> Callable[[], torch.nn.Module]:
    """A flavor builder as csm/models.py writes its own (llama3_2_1B, llama3_2_100M), for our shapes."""
    from torchtune.models import llama3_2

    return lambda: llama3_2.llama3_2(
        vocab_size=128_256, num_layers=f.num_layers, num_heads=f.num_heads, num_kv_heads=f.num_kv_heads,
        embed_dim=f.embed_dim, max_seq_len=f.max_seq_len, intermediate_dim=f.intermediate_dim, attn_dropout=0.0,
        norm_eps=f.norm_eps, rope_base=int(f.rope_base), scale_factor=int(f.rope_scale_factor),
    )  # fmt: skip
