from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from csm_adapt.terminal import make_console


@click.command()
@click.argument("recordings", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--min-seconds", default=3.0, show_default=True, help="Shortest clip kept.")
@click.option("--max-seconds", default=15.0, show_default=True, help="Longest clip.")
@click.option("--min-pause", default=0.3, show_default=True, help="Shorter silences are not cut points.")
@click.option("--max-pause", default=1.5, show_default=True, help="A longer pause always ends a clip.")
@click.option("--threshold", default=0.5, show_default=True, help="VAD speech probability threshold.")
@click.option("--loudness", type=float, default=None, help="Normalise each clip to this loudness (LUFS, e.g. -20).")
@click.option("--speaker", type=int, default=None, help="Speaker number written to every clip's record.")
@click.option("--whisper", default=None, help="Transcribe with this Whisper model (hub id or folder).")
@click.option("--language", default=None, help="Whisper's language, e.g. fr (default: detected).")
@click.option(
    "--word-timestamps",
    is_flag=True,
    help="Cut between Whisper's words (never inside one) and store the words and their times in each record.",
)
@click.option("--device", default="cpu", show_default=True, help="Where to decode, detect and transcribe.")
def segment(recordings: Path, out: Path, **options) -> None:
    """Cut the long recordings in RECORDINGS into clips at pauses, written to OUT.

    Writes OUT/clips/*.wav, OUT/metadata.jsonl (read it with the json reader) and OUT/summary.json.
    Without --whisper each clip's text is empty: fill it in, or prepare rejects the clip.

    Example: csm-adapt segment data/podcasts data/podcast-clips --whisper openai/whisper-large-v3 --language fr
    """
    from csm_adapt.segment.segmenter import METADATA, SegmentOptions, segment_folder

    console = make_console()
    with console.status("segmenting") as status:
        summary = segment_folder(
            recordings, out, SegmentOptions(**options), progress=lambda name: status.update(f"segmenting {name}")
        )
    table = Table(title="segment", show_header=False)
    table.add_row("recordings", str(summary["recordings"]))
    table.add_row("failed", str(len(summary["failed"])))
    table.add_row("hours in", f"{summary['hours_in']:.3f}")
    table.add_row("hours kept", f"{summary['hours_kept']:.3f}")
    table.add_row("clips", str(summary["clips"]))
    table.add_row("dropped (too short)", f"{summary['dropped_regions']} ({summary['dropped_seconds']:.1f} s)")
    for bin_, count in summary["length_histogram"].items():
        table.add_row(f"  {bin_} s", str(count))
    console.print(table)
    for failure in summary["failed"]:
        console.print(f"[yellow]skipped[/] {escape(failure['detail'])}")
    console.print(f"clips and metadata: {escape(str(out))}")
    console.print(escape(f'read them with: [data.reader] name = "json", path = "{out / METADATA}"'))
