"""Loading the evaluators' transformers models: a hub id (downloaded once into the Hugging Face cache;
with HF_HUB_OFFLINE=1 read from it only) or a local folder saved with `save_pretrained`."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from csm_adapt.errors import CsmAdaptError


def transformers_module(evaluator: str):
    try:
        import transformers
    except ImportError:
        raise CsmAdaptError(f"evaluator {evaluator} needs transformers: pip install 'csm-adapt[eval]'") from None
    return transformers


def from_pretrained(cls, source: str, evaluator: str, **kwargs):
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CsmAdaptError(
            f"evaluator {evaluator}: cannot load {source!r} ({reason}). Give a local folder (save_pretrained), "
            "or a hub id: without network, set HF_HUB_OFFLINE=1 with the model already in the Hugging Face cache"
        ) from None


def identity(source: str) -> str:
    """What produced a number: the source, its hub revision (the cached snapshot's commit) when it
    came from the hub, and transformers' version."""
    revision = ""
    if not Path(source).expanduser().is_dir():
        from transformers.utils import cached_file

        config = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False)
        if config is not None and Path(config).parent.parent.name == "snapshots":
            revision = f"@{Path(config).parent.name[:12]}"
    return f"{source}{revision} (transformers {version('transformers')})"
