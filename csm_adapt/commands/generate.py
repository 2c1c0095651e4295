from __future__ import annotations

from pathlib import Path

import click

from csm_adapt.terminal import make_console


def output_paths(out: Path, count: int) -> list[Path]:
    """One text writes OUT itself; several write OUT's stem with -0, -1, ... before the suffix."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


@click.command()
@click.option(
    "--model",
    "model_source",
    help="Hub id (sesame/csm-1b) or checkpoint directory [with --adapter: the base its adapter.json names].",
)
@click.option(
    "--adapter",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="An adapter directory (adapter.json + adapter.safetensors) to speak with, unmerged, over --model.",
)
@click.option("--text", "texts", multiple=True, required=True, help="Text to speak; repeat for a batch.")
@click.option("--speaker", type=int, default=0, show_default=True, help="Speaker id of the generated speech.")
@click.option(
    "--context",
    type=(int, str, click.Path(exists=True, dir_okay=False, path_type=Path)),
    multiple=True,
    metavar="SPEAKER TEXT CLIP",
    help="A context utterance before the text: speaker id, transcript, audio file. Repeatable, in order.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("out.wav"), show_default=True)
@click.option("--text-tokenizer", default=None, help="Tokenizer source (default: the checkpoint's, else Llama-3.2).")
@click.option("--audio-codec", default=None, help="Mimi weights source (default: the checkpoint's, else kyutai's).")
@click.option("--max-audio-ms", type=click.IntRange(min=80), default=10_000, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.9, show_default=True)
@click.option("--topk", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@click.option("--device", default="auto", show_default=True, help="auto: CUDA when available, else CPU.")
@click.option(
    "--save-frames", is_flag=True, help="Also write the generated codes as .npy [32, frames] beside each wav."
)
def generate(
    model_source,
    adapter,
    texts,
    speaker,
    context,
    out,
    text_tokenizer,
    audio_codec,
    max_audio_ms,
    temperature,
    topk,
    seed,
    device,
    save_frames,
) -> None:
    """Speak each --text with a CSM checkpoint and write 24 kHz wav files.

    Example: csm-adapt generate --model sesame/csm-1b --text "Marie aime les pommes." --speaker 0 --out out.wav

    With an adapter: csm-adapt generate --adapter runs/french-lora/checkpoints/final --text "Bonjour."
    """
    import numpy as np

    from csm_adapt.audio_io import save_wav
    from csm_adapt.model.synthesizer import Segment, Synthesizer
    from csm_adapt.training.distributed import pick_device

    device = pick_device(device, 0)
    console = make_console()
    if model_source is None and adapter is None:
        raise click.UsageError("give --model, --adapter or both")
    with console.status("loading model, tokenizer and codec"):
        if adapter is None:
            speech = Synthesizer.load(
                model_source, text_tokenizer=text_tokenizer, audio_codec=audio_codec, device=device
            )
        else:
            from csm_adapt.training.adapters import load_adapted

            model, _ = load_adapted(adapter, model_source, device=device)
            speech = Synthesizer.around(
                model, adapter, text_tokenizer=text_tokenizer, audio_codec=audio_codec, device=device
            )
    segments = [Segment(speaker=s, text=t, audio=p) for s, t, p in context]
    with console.status(f"generating {len(texts)} utterance(s)"):
        results = speech.generate(
            list(texts),
            speaker,
            context=segments,
            max_audio_ms=max_audio_ms,
            temperature=temperature,
            topk=topk,
            seed=seed,
        )
    for path, result in zip(output_paths(out, len(texts)), results):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_wav(path, result.audio)
        line = f"{path}  {result.audio.numel() / 24_000:.2f} s, {result.frames.shape[1]} frames"
        if save_frames:
            np.save(path.with_suffix(".npy"), result.frames.numpy().astype(np.int16))
            line += f"  (+ {path.with_suffix('.npy').name})"
        console.print(line)
