from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from csm_adapt.commands.convert import DTYPES


@click.command()
@click.argument("adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--base", help="The base model (hub id or checkpoint) [default: the one adapter.json names].")
@click.option(
    "--to",
    "layout",
    type=click.Choice(["sesame", "transformers"]),
    default="sesame",
    show_default=True,
    help="sesame: the original release's layout; transformers: CsmForConditionalGeneration's.",
)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
def merge(adapter_dir: Path, out_dir: Path, base: str | None, layout: str, dtype: str) -> None:
    """Fold the adapter in ADAPTER_DIR into its base model and write a full checkpoint to OUT_DIR.

    The result is a plain CSM checkpoint (config.json + model.safetensors) that csm-adapt, Sesame's
    own code (sesame layout) or transformers (--to transformers) load without csm-adapt's adapters.

    Example: csm-adapt merge runs/french-lora/checkpoints/final french-merged --base sesame/csm-1b
    """
    import torch

    from csm_adapt.model.checkpoint import save_model
    from csm_adapt.model.synthesizer import FRONTEND_FILE
    from csm_adapt.training.adapters import load_adapted, merge_adapter

    with Console().status(f"merging {adapter_dir}"):
        model, spec = load_adapted(adapter_dir, base)
        merged = merge_adapter(model)
        out = save_model(
            merged,
            out_dir,
            layout="transformers" if layout == "transformers" else "original",
            dtype=getattr(torch, dtype),
        )
        frontend = adapter_dir / FRONTEND_FILE
        if frontend.is_file() and layout == "sesame":
            (out / FRONTEND_FILE).write_text(frontend.read_text())  # generate keeps the tokenizer and codec
    Console().print(
        f"wrote {out}: {spec.ref.name} adapter merged into {base or spec.base.checkpoint or spec.base.config}"
    )
