"""`csm-adapt push`: a checkpoint and its model card to the Hugging Face hub (see csm_adapt/hub_push.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from csm_adapt.terminal import make_console


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("repo_id")
@click.option(
    "--layout",
    type=click.Choice(["original", "transformers"]),
    default="original",
    show_default=True,
    help="original: Sesame's layout (csm-adapt and Sesame load it); transformers: CsmForConditionalGeneration's.",
)
@click.option("--language", "languages", multiple=True, help="Language code for the model card (repeatable): fr, en.")
@click.option("--private", is_flag=True, help="Create the repository private.")
@click.option("--message", default="Upload from csm-adapt", show_default=True, help="The commit message.")
@click.option(
    "--dry-run",
    "dry_run",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the folder that would be uploaded here, and upload nothing.",
)
def push(checkpoint: Path, repo_id: str, layout: str, languages, private: bool, message: str, dry_run) -> None:
    """Upload CHECKPOINT to the Hugging Face hub as REPO_ID, with a model card.

    Uploads the weights, csm_adapt.json (tokenizer and codec), the run's recipe.toml, its last
    sample, and a README.md model card (base model and licence, languages, data summary from
    index.json, training settings, metrics). Log in first (`hf auth login` or HF_TOKEN).

    Example: csm-adapt push runs/french/checkpoints/best me/csm-french --language fr --dry-run hub-folder
    """
    from csm_adapt.hub_push import build_folder, upload

    console = make_console()
    if dry_run is not None:
        folder = build_folder(checkpoint, repo_id, dry_run, layout=layout, languages=languages)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        console.print(f"would upload to {repo_id}: {', '.join(files)} (in {folder})", markup=False, highlight=False)
        return
    with tempfile.TemporaryDirectory(prefix="csm-adapt-push-") as tmp:
        folder = build_folder(checkpoint, repo_id, Path(tmp) / "upload", layout=layout, languages=languages)
        url = upload(folder, repo_id, private=private, message=message)
    console.print(f"pushed {checkpoint} to {url}", markup=False, highlight=False)
