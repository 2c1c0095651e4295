from __future__ import annotations

from pathlib import Path

import click

from csm_adapt.terminal import make_console

# Names only: importing torch here would slow every command, `--help` included.
DTYPES = ("float32", "bfloat16", "float16")


@click.command()
@click.argument("source")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--to",
    "layout",
    type=click.Choice(["transformers", "sesame"]),
    required=True,
    help="transformers: CsmForConditionalGeneration's layout; sesame: the original release's layout.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="float32",
    show_default=True,
    help="Precision of the written weights (CSM-1B was released in float32).",
)
def convert(source: str, out_dir: Path, layout: str, dtype: str) -> None:
    """Rewrite the CSM checkpoint SOURCE into OUT_DIR in another layout.

    SOURCE is a hub id (sesame/csm-1b), a checkpoint directory or a weights file, in either layout:
    Sesame's original (config.json + model.safetensors, or ckpt.pt) or transformers'
    (config.json with model_type "csm" + model.safetensors or shards). The layout is detected.
    OUT_DIR gets config.json + model.safetensors, and SOURCE's csm_adapt.json (the tokenizer and
    codec it was trained with) when it has one; other files in OUT_DIR are left alone.

    Example: csm-adapt convert runs/french/checkpoints/final hf-french --to transformers
    """
    import torch

    from csm_adapt.model.checkpoint import convert as convert_checkpoint

    with make_console().status(f"converting {source}"):
        out = convert_checkpoint(source, out_dir, to=layout, dtype=getattr(torch, dtype))
    make_console().print(f"wrote {out} ({layout} layout, {dtype})")
