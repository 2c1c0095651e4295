"""A folder of long recordings -> `clips/*.wav`, `metadata.jsonl` (the `json` reader's format) and
`summary.json` (hours kept, clips, a length histogram).

Each recording is decoded with csm-adapt's audio I/O, its speech found by Silero VAD, and the speech
regions grouped into clips of `min_seconds`..`max_seconds` that start and end in pauses
(`csm_adapt.segment.cuts`). Clips are optionally loudness-normalised and transcribed with Whisper;
without Whisper their `text` is empty, to be filled in (prepare rejects empty texts).

With word timestamps Whisper hears the speech before it is cut (up to 30 s at a time) and the cuts
are chosen between its words (`csm_adapt.segment.align`): no clip edge falls inside a word, and a
clip's text is exactly the words inside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import attrs
import torch

from csm_adapt.audio_io import SAMPLE_RATE, load_audio, save_wav
from csm_adapt.errors import AudioError, CsmAdaptError
from csm_adapt.files import write_text_atomic
from csm_adapt.segment.align import Word, align_cuts, text_of, windows, words_in
from csm_adapt.segment.cuts import Span, group_regions, length_histogram
from csm_adapt.segment.loudness import normalize_loudness
from csm_adapt.segment.vad import VAD_RATE, Vad

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
METADATA = "metadata.jsonl"
SUMMARY = "summary.json"


@attrs.frozen(kw_only=True)
class SegmentOptions:
    min_seconds: float = 3.0  # clips shorter than this are dropped
    max_seconds: float = 15.0  # and none is longer
    min_pause: float = 0.3  # shorter silences are not pauses (no cut there)
    max_pause: float = 1.5  # a longer pause always ends a clip
    pad: float = 0.15  # silence kept around the speech, at most half of each pause
    threshold: float = 0.5  # VAD speech probability
    loudness: float | None = None  # target LUFS (e.g. -20); None leaves levels as recorded
    speaker: int | None = None  # written to every clip's record
    whisper: str | None = None  # Whisper model (hub id or folder) to transcribe the clips
    language: str | None = None  # Whisper's language (e.g. "fr"); None: detected
    word_timestamps: bool = False  # cut between Whisper's words; store them with their times in each record
    device: str = "cpu"

    def __attrs_post_init__(self) -> None:
        if not 0 < self.min_seconds <= self.max_seconds:
            raise CsmAdaptError(f"need 0 < min_seconds ({self.min_seconds}) <= max_seconds ({self.max_seconds})")
        if self.word_timestamps and self.whisper is None:
            raise CsmAdaptError("word timestamps come from Whisper: give a Whisper model too")


def recordings(folder: Path) -> list[Path]:
    """Audio files under `folder`, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def segment_folder(
    folder: Path, out: Path, options: SegmentOptions, *, progress: Callable[[str], None] = lambda name: None
) -> dict:
    """Segment every recording under `folder` into `out`; returns the summary (also `out/summary.json`)."""
    files = recordings(folder)
    if not files:
        raise CsmAdaptError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    if (out / METADATA).exists():
        raise CsmAdaptError(f"{out / METADATA} exists: segment into another folder, or delete it first")
    vad = Vad(
        threshold=options.threshold, min_pause=options.min_pause, pad=options.pad, max_seconds=options.max_seconds
    )
    transcriber = None
    if options.whisper is not None:
        from csm_adapt.segment.transcribe import Transcriber

        transcriber = Transcriber(options.whisper, options.language, options.device)
    records, kept, dropped, failed, seconds_in = [], [], [], [], 0.0
    for path in files:
        progress(str(path.relative_to(folder)))
        try:
            wav = load_audio(path, device=options.device)
        except AudioError as e:
            failed.append({"recording": str(path), "reason": e.reason, "detail": str(e)})
            continue
        seconds_in += wav.numel() / SAMPLE_RATE
        regions = vad.speech(load_audio(path, sample_rate=VAD_RATE))
        lengths = {"min_seconds": options.min_seconds, "max_seconds": options.max_seconds}
        if options.word_timestamps:
            words = transcriber.words(wav, windows(regions, max_pause=options.max_pause))
            clips, too_short = align_cuts(regions, words, **lengths, max_pause=options.max_pause)
            clip_words = words_in(clips, words)
        else:
            clips, too_short = group_regions(regions, **lengths, max_pause=options.max_pause)
            clip_words = [None] * len(clips)
        dropped += too_short
        for i, (clip, heard) in enumerate(zip(clips, clip_words)):
            records.append(_write_clip(path, folder, out, i, clip, heard, wav, options, transcriber))
        kept += clips
    _write_text(out / METADATA, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    summary = {
        "recordings": len(files),
        "failed": failed,
        "hours_in": round(seconds_in / 3600, 4),
        "hours_kept": round(sum(c.seconds for c in kept) / 3600, 4),
        "clips": len(kept),
        "dropped_regions": len(dropped),
        "dropped_seconds": round(sum(c.seconds for c in dropped), 2),
        "length_histogram": length_histogram(kept),
    }
    _write_text(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
    return summary


def _write_clip(
    path: Path,
    folder: Path,
    out: Path,
    i: int,
    clip: Span,
    words: list[Word] | None,
    wav: torch.Tensor,
    options,
    transcriber,
):
    """Writes the clip's audio; returns its record. `words`: the words inside it (word timestamps)."""
    relative = path.relative_to(folder).with_suffix("")
    clip_path = Path("clips") / relative.parent / f"{relative.name}_{i:04d}.wav"
    audio = wav[round(clip.start * SAMPLE_RATE) : round(clip.end * SAMPLE_RATE)]
    if options.loudness is not None:
        audio = normalize_loudness(audio, SAMPLE_RATE, options.loudness)
    (out / clip_path).parent.mkdir(parents=True, exist_ok=True)
    save_wav(out / clip_path, audio)
    record = {"path": clip_path.as_posix(), "text": ""}
    if words is not None:
        record["text"] = text_of(words)
        record["words"] = [
            {"word": w.text.strip(), "start": round(w.start - clip.start, 3), "end": round(w.end - clip.start, 3)}
            for w in words
        ]
    elif transcriber is not None:
        record["text"] = transcriber.text(audio)
    if options.speaker is not None:
        record["speaker"] = options.speaker
    # Not `start`/`end`: to the json reader those would cut a span out of the clip file.
    record.update(
        recording=path.relative_to(folder).as_posix(), offset=round(clip.start, 3), seconds=round(clip.seconds, 3)
    )
    return record


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
