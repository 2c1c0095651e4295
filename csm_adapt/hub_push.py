"""What `csm-adapt push` uploads: a folder with the checkpoint, its tokenizer/codec record, the run's
recipe, a sample and a model card, built from a checkpoint and the run directory around it.

    README.md          the model card (YAML metadata for the hub, then base model, data, training, metrics)
    config.json, model.safetensors    original layout (or transformers' on request)
    csm_adapt.json     the text tokenizer and codec the model was trained with
    recipe.toml        the resolved recipe of the run
    samples/sample.wav the last sample the run generated, with its prompt in the card
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from csm_adapt.config import toml_io
from csm_adapt.errors import CheckpointError
from csm_adapt.model.sources import HUB_ID, is_local

BASE_LICENSES = {"sesame/csm-1b": "apache-2.0"}  # the base model's licence, which a finetune inherits
FRONTEND = "csm_adapt.json"


def run_dir_of(checkpoint: Path) -> Path | None:
    """`runs/x` for `runs/x/checkpoints/best`; None for a checkpoint outside a run directory."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def build_folder(checkpoint: Path, repo_id: str, out: Path, *, layout: str = "original", languages=()) -> Path:
    """Write the upload folder for `checkpoint` into `out` (which must not exist or be empty)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise CheckpointError(f"{checkpoint}: not a checkpoint directory (no config.json)")
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: not empty; give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    if layout == "transformers":
        from csm_adapt.model.checkpoint import convert

        convert(checkpoint, out, to="transformers")  # carries csm_adapt.json
    else:
        for name in ("config.json", "model.safetensors", "ckpt.pt", FRONTEND):
            if (checkpoint / name).is_file():
                shutil.copyfile(checkpoint / name, out / name)
    run_dir = run_dir_of(checkpoint)
    recipe = _read_toml(run_dir / "recipe.toml") if run_dir else {}
    if run_dir and (run_dir / "recipe.toml").is_file():
        shutil.copyfile(run_dir / "recipe.toml", out / "recipe.toml")
    sample = _last_sample(run_dir, recipe) if run_dir else None
    if sample:
        (out / "samples").mkdir()
        shutil.copyfile(sample[0], out / "samples" / "sample.wav")
    (out / "README.md").write_text(
        model_card(checkpoint, repo_id, recipe, run_dir, sample[1] if sample else None, layout, languages), "utf-8"
    )
    return out


def model_card(checkpoint, repo_id, recipe, run_dir, sample_text, layout, languages) -> str:
    model = recipe.get("model", {})
    base = model.get("checkpoint")
    base_id = base if isinstance(base, str) and HUB_ID.match(base) and not is_local(base) else None
    record = _read_json(checkpoint / FRONTEND) or {}
    meta = ["---", "library_name: csm-adapt", "pipeline_tag: text-to-speech", "tags:", "- csm", "- text-to-speech"]
    if base_id:
        meta.append(f"base_model: {base_id}")
        if base_id in BASE_LICENSES:
            meta.append(f"license: {BASE_LICENSES[base_id]}")
    if languages:
        meta += ["language:"] + [f"- {language}" for language in languages]
    meta.append("---")
    lines = [*meta, "", f"# {repo_id.split('/')[-1]}", ""]
    if base_id:
        lines.append(f"A finetune of [{base_id}](https://huggingface.co/{base_id}) made with csm-adapt.")
    else:
        lines.append(f"A CSM model ({model.get('config', 'csm-1b')}, trained from random weights) made with csm-adapt.")
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f'csm-adapt generate --model {repo_id} --text "..." --out out.wav',
        "```",
        "",
    ]
    lines.append(f"Weights in the {'transformers' if layout == 'transformers' else 'original (Sesame)'} layout.")
    tokenizer, codec = record.get("text_tokenizer", "?"), record.get("audio_codec", "?")
    lines += ["", f"Text tokenizer: `{tokenizer}`; audio codec (Mimi): `{codec}` (recorded in `csm_adapt.json`)."]
    if any(Path(value).is_absolute() for value in (tokenizer, codec)):
        lines.append("A local path above was used in training: give `--text-tokenizer` / `--audio-codec` when loading.")
    lines += _data_section(recipe, run_dir) + _training_section(recipe) + _metrics_section(checkpoint, run_dir)
    if sample_text:
        lines += ["", "## Sample", "", f"`samples/sample.wav`: {sample_text}"]
    return "\n".join(lines) + "\n"


def _data_section(recipe: dict, run_dir: Path | None) -> list[str]:
    out = recipe.get("data", {}).get("out")
    index = _read_json(Path(out) / "index.json") if out else None
    if not index:
        return []
    summary = index.get("summary", {})
    kept = summary.get("kept", {})
    reader = recipe.get("data", {}).get("reader", {}).get("name", "?")
    return [
        "",
        "## Data",
        "",
        f"- reader: `{reader}`",
        f"- samples: {kept.get('train', 0)} train, {kept.get('val', 0)} validation "
        f"({summary.get('samples_read', 0)} read, {summary.get('rejected', 0)} rejected)",
        f"- audio: {summary.get('hours', 0):.2f} hours",
    ]


def _training_section(recipe: dict) -> list[str]:
    train = recipe.get("train")
    if not train:
        return []
    keys = ("steps", "lr", "schedule", "warmup_steps", "rows_per_step", "precision", "trainable")
    rows = [f"| `train.{key}` | {train[key]} |" for key in keys if key in train]
    loss = recipe.get("loss", {})
    if "strategy" in loss:
        rows.append(f"| `loss.strategy` | {loss['strategy']} |")
    return ["", "## Training", "", "| setting | value |", "|---|---|", *rows]


def _metrics_section(checkpoint: Path, run_dir: Path | None) -> list[str]:
    rows = []
    best = _read_json(checkpoint / "best.json")
    if best:
        rows.append(f"| best validation loss | {best['val_loss']:.4f} (step {best['step']}) |")
    last: dict[str, tuple[int, float]] = {}
    metrics = run_dir / "metrics.jsonl" if run_dir else None
    if metrics and metrics.is_file():
        for line in metrics.read_text("utf-8").splitlines():
            record = json.loads(line)
            if record["name"] in ("train/loss", "val/loss"):
                last[record["name"]] = (record["step"], record["value"])
    rows += [f"| last `{name}` | {value:.4f} (step {step}) |" for name, (step, value) in sorted(last.items())]
    return ["", "## Metrics", "", "| metric | value |", "|---|---|", *rows] if rows else []


def _last_sample(run_dir: Path, recipe: dict) -> tuple[Path, str] | None:
    steps = sorted((run_dir / "samples").glob("step-*/0.wav"))
    if not steps:
        return None
    prompts = recipe.get("samples", {}).get("prompts", [])
    text = prompts[0]["text"] if prompts else ""
    return steps[-1], f'"{text}" at {steps[-1].parent.name}'


def _read_json(path: Path):
    try:
        return json.loads(path.read_text("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_toml(path: Path) -> dict:
    return toml_io.read_toml(path) if path.is_file() else {}


def upload(folder: Path, repo_id: str, *, private: bool, message: str) -> str:
    """Create the repo if needed and upload `folder`; returns the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=message)
    except HfHubHTTPError as e:
        raise CheckpointError(f"cannot push to {repo_id}: {e}. Log in with `hf auth login` or set HF_TOKEN") from None
    return str(url)
