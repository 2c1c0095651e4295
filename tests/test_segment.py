"""`csm-adapt segment`: recordings made of demo clips joined by silences are cut in the pauses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional
from click.testing import CliRunner

from csm_adapt.cli import cli
from csm_adapt.segment.align import Word, text_of
from csm_adapt.segment.cuts import Span, group_regions, length_histogram
from csm_adapt.segment.loudness import normalize_loudness
from csm_adapt_plugins.json_reader import JsonOptions, JsonReader

pytest.importorskip("silero_vad")

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo_data" / "wavs"
RATE = 16_000


def test_regions_group_into_clips_at_pauses_within_the_length_range():
    regions = [Span(0.5, 2.0), Span(2.4, 4.0), Span(4.3, 6.5), Span(8.5, 9.0), Span(9.2, 9.6), Span(12, 30)]
    clips, dropped = group_regions(regions, min_seconds=1.0, max_seconds=4.0, max_pause=1.0)
    # 0.5..4.0 (3.5 s) cannot take 4.3..6.5 (would be 6 s); 8.5..9.6 is joined over a 0.2 s pause;
    # a 2 s pause ends a clip; the 18 s region is longer than any clip may be.
    assert clips == [Span(0.5, 4.0), Span(4.3, 6.5), Span(8.5, 9.6)]
    assert dropped == [Span(12, 30)]
    clips, dropped = group_regions(regions[:2], min_seconds=2.0, max_seconds=4.0, max_pause=0.3)
    assert clips == [] and dropped == regions[:2]  # the 0.4 s pause splits them, each under 2 s
    assert length_histogram(clips) == {}
    assert length_histogram([Span(0, 1), Span(0, 5.5), Span(1, 2.5)]) == {"0-2": 2, "2-4": 0, "4-6": 1}


def test_loudness_is_normalised_with_peaks_kept_under_the_ceiling():
    t = torch.arange(RATE * 2) / RATE
    quiet = 0.01 * torch.sin(2 * torch.pi * 300 * t)
    louder = normalize_loudness(quiet, RATE, -23.0)
    assert torchaudio.functional.loudness(louder.unsqueeze(0), RATE).item() == pytest.approx(-23.0, abs=0.1)
    spiky = quiet.clone()
    spiky[100] = 0.5  # one peak: reaching -10 LUFS would clip it, so the gain stops at -1 dBFS
    limited = normalize_loudness(spiky, RATE, -10.0)
    assert limited.abs().max().item() == pytest.approx(10 ** (-1 / 20), rel=1e-4)
    assert torch.equal(normalize_loudness(quiet[:1000], RATE, -23.0), quiet[:1000])  # too short to measure


def speech_extent(wav: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(wav) > 0.02)
    return int(loud[0]), int(loud[-1]) + 1


def recording(
    path: Path, clips: list[Path], pauses: list[float], lead: float = 0.6, trim: bool = False
) -> list[tuple[float, float]]:
    """Demo clips joined by `pauses` of digital silence (`trim`: the clips' own silence at their edges
    cut off first); returns each clip's speech (s..e seconds)."""
    parts, speech, position = [np.zeros(int(lead * RATE), np.float32)], [], int(lead * RATE)
    for clip, pause in zip(clips, [*pauses, lead]):
        wav, rate = sf.read(clip, dtype="float32")
        assert rate == RATE
        first, last = speech_extent(wav)
        if trim:
            wav, first, last = wav[first:last], 0, last - first
        speech.append(((position + first) / RATE, (position + last) / RATE))
        parts += [wav, np.zeros(int(pause * RATE), np.float32)]
        position += len(wav) + int(pause * RATE)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.concatenate(parts), RATE)
    return speech


def test_segment_cuts_recordings_in_their_pauses_and_writes_what_the_json_reader_reads(tmp_path):
    demo = sorted(DEMO.glob("*.wav"))
    folder = tmp_path / "recordings"
    speech = {
        "talk.wav": recording(folder / "talk.wav", demo[:4], [0.8, 1.6, 0.7]),
        "sub/interview.wav": recording(folder / "sub" / "interview.wav", demo[4:9], [0.6, 0.9, 0.6, 2.0]),
    }
    (folder / "broken.wav").write_bytes(b"RIFF not audio at all" * 20)
    out = tmp_path / "clips"
    result = CliRunner().invoke(
        cli,
        [
            "segment", str(folder), str(out), "--min-seconds", "1.0", "--max-seconds", "5.5",
            "--min-pause", "0.4", "--max-pause", "1.2", "--loudness", "-20", "--speaker", "3",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    by_recording: dict[str, list[dict]] = {}
    for record in records:
        by_recording.setdefault(record["recording"], []).append(record)
    assert sorted(by_recording) == sorted(speech)
    for name, extents in speech.items():
        clips = [(r["offset"], r["offset"] + r["seconds"]) for r in by_recording[name]]
        for start, end in clips:
            # No cut inside speech: each cut point lies in a pause (or the lead-in / tail).
            for s, e in extents:
                assert not s < start < e and not s < end < e, (name, start, end, s, e)
        # Every clip of speech is in exactly one clip (none is dropped here: all are over 1 s).
        assert all(sum(start <= s and e <= end for start, end in clips) == 1 for s, e in extents), (name, clips)
    # Pauses over 1.2 s always cut; clips stay under 5.5 s, so 0.6-0.9 s pauses cut when they must.
    assert len(by_recording["talk.wav"]) == 2 and len(by_recording["sub/interview.wav"]) == 3

    for record in records:
        info = sf.info(out / record["path"])
        assert info.samplerate == 24_000 and info.duration == pytest.approx(record["seconds"], abs=1e-3)
        assert 1.0 <= record["seconds"] <= 5.5 and record["speaker"] == 3 and record["text"] == ""
        wav, _ = sf.read(out / record["path"], dtype="float32")
        loudness = torchaudio.functional.loudness(torch.from_numpy(wav).unsqueeze(0), 24_000).item()
        assert loudness == pytest.approx(-20.0, abs=0.5)
    samples = list(JsonReader(JsonOptions(path=out / "metadata.jsonl")).read())
    assert [s.turns[0].audio for s in samples] == [out / r["path"] for r in records]
    assert all(s.turns[0].start is None and s.turns[0].speaker == 3 for s in samples)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] == len(records) == sum(summary["length_histogram"].values())
    assert summary["hours_kept"] == pytest.approx(sum(r["seconds"] for r in records) / 3600, abs=1e-4)
    assert [f["reason"] for f in summary["failed"]] == ["corrupt"]
    assert "hours kept" in result.output and "broken.wav" in result.output

    again = CliRunner().invoke(cli, ["segment", str(folder), str(out)])
    assert again.exit_code == 2 and "metadata.jsonl exists" in again.output


def spoken_texts() -> dict[str, str]:
    """Demo clip id -> its text as espeak-ng speaks it (metadata.csv's normalized column)."""
    lines = (DEMO.parent / "metadata.csv").read_text(encoding="utf-8").splitlines()
    return {clip_id: spoken for clip_id, _, spoken in (line.split("|") for line in lines)}


def timed_words(text: str, start: float, end: float) -> list[Word]:
    """`text`'s words over start..end, each as long as its letters, touching: as Whisper times them."""
    names = text.split()
    step = (end - start) / sum(len(name) + 1 for name in names)
    words, t = [], start
    for name in names:
        words.append(Word(f" {name}", t, t + step * (len(name) + 1)))
        t = words[-1].end
    return words


class HeardWords:
    """Whisper with word timestamps, played: it knows the words of each recording (told by its length)
    with their times, and returns those in the spans it is asked for, as `Transcriber.words` does."""

    def __init__(self, timelines: dict[int, list[Word]]):
        self.timelines, self.heard = timelines, {}

    def words(self, wav: torch.Tensor, spans: list[Span]) -> list[Word]:
        timeline = self.timelines[wav.numel()]
        heard = [
            Word(w.text, max(w.start, span.start), min(w.end, span.end))
            for span in spans
            for w in timeline
            if span.start <= (w.start + w.end) / 2 < span.end
        ]
        self.heard[wav.numel()] = heard
        return heard

    def text(self, clip: torch.Tensor) -> str:
        raise AssertionError("with word timestamps no clip is transcribed on its own")


def test_with_word_timestamps_no_cut_falls_inside_a_word_and_each_clip_says_the_words_in_it(tmp_path, monkeypatch):
    from csm_adapt.audio_io import load_audio
    from csm_adapt.segment import transcribe
    from csm_adapt.segment.segmenter import SegmentOptions, segment_folder
    from csm_adapt.segment.vad import VAD_RATE, Vad

    demo, texts, folder = sorted(DEMO.glob("*.wav")), spoken_texts(), tmp_path / "in"
    # talk: sentences apart, with words reaching into the pauses or holding one whole; monologue:
    # sentences run together, longer than a clip, so voice-activity detection splits them where it must.
    layouts = {"talk.wav": (demo[:6], [0.8, 0.5, 0.9, 0.6, 1.0], False), "monologue.wav": (demo[6:10], [0.0] * 3, True)}
    timelines, names = {}, {}
    for name, (clips, pauses, trim) in layouts.items():
        extents = recording(folder / name, clips, pauses, trim=trim)
        sentences = [timed_words(texts[c.stem], s, e) for c, (s, e) in zip(clips, extents)]
        if name == "talk.wav":
            last = sentences[0][-1]  # Whisper gives the pause after a sentence to its last word ...
            sentences[0][-1] = Word(last.text, last.start, last.end + 0.35)
            first = sentences[2][0]  # ... or the whole pause before one to its first word
            sentences[2][0] = Word(first.text, extents[1][1] + 0.02, first.end)
        length = load_audio(folder / name).numel()
        timelines[length], names[length] = [w for sentence in sentences for w in sentence], name
    fake = HeardWords(timelines)
    monkeypatch.setattr(transcribe, "Transcriber", lambda model, language, device: fake)
    lengths = {"min_seconds": 1.0, "max_seconds": 4.5}
    options = SegmentOptions(**lengths, min_pause=0.4, max_pause=1.2, whisper="played", word_timestamps=True)
    summary = segment_folder(folder, tmp_path / "out", options)
    records = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert summary["dropped_regions"] == 0 and summary["clips"] == len(records)

    assert sorted(names[length] for length in fake.heard) == sorted(layouts)
    for length, heard in fake.heard.items():
        name, timeline = names[length], timelines[length]
        assert heard == timeline  # all the speech was transcribed, each word whole
        mine = [r for r in records if r["recording"] == name]
        spans = [(r["offset"], r["offset"] + r["seconds"]) for r in mine]
        for edge in {e for span in spans for e in span}:
            assert not any(w.start + 1e-3 < edge < w.end - 1e-3 for w in heard), (name, edge)
        for record, (start, end) in zip(mine, spans):
            inside = [w for w in heard if start - 1e-3 <= w.start and w.end <= end + 1e-3]
            assert record["text"] == text_of(inside) and 1.0 <= record["seconds"] <= 4.5
            assert [w["word"] for w in record["words"]] == [w.text.strip() for w in inside]
            for mine_word, word in zip(record["words"], inside):
                assert mine_word["start"] == pytest.approx(word.start - start, abs=2e-3)
                assert mine_word["end"] == pytest.approx(word.end - start, abs=2e-3)
        assert " ".join(r["text"] for r in mine) == " ".join(texts[c.stem] for c in layouts[name][0])
        # The point of it: cut at the pauses alone, clips of this recording would end inside words.
        vad = Vad(threshold=options.threshold, min_pause=0.4, pad=options.pad, max_seconds=4.5)
        alone, _ = group_regions(
            vad.speech(load_audio(folder / name, sample_rate=VAD_RATE)), **lengths, max_pause=options.max_pause
        )
        assert any(w.start < e < w.end for c in alone for e in (c.start, c.end) for w in heard), name


def tiny_whisper(folder: Path) -> Path:
    """A randomly initialised Whisper (1 layer, d_model 16) with a byte-level vocab: loads and runs
    like a real one through transformers' pipeline, offline."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, bytes_to_unicode

    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(bytes_to_unicode().values())}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    end = "<|endoftext|>"
    tokenizer = WhisperTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=end, bos_token=end, eos_token=end
    )
    languages = [f"<|{code}|>" for code in LANGUAGES]
    tasks = ["<|translate|>", "<|transcribe|>"]
    specials = [end, "<|startoftranscript|>", *languages, *tasks, "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": [*specials, "<|notimestamps|>"]})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    ids = tokenizer.convert_tokens_to_ids
    special_ids = {"decoder_start_token_id": ids("<|startoftranscript|>"), "eos_token_id": ids(end)}
    special_ids |= {"pad_token_id": ids(end), "bos_token_id": ids(end)}
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32, max_target_positions=64,
        **special_ids,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        **special_ids, max_length=12, is_multilingual=True, lang_to_id={t: ids(t) for t in languages},
        task_to_id={"translate": ids(tasks[0]), "transcribe": ids(tasks[1])},
        no_timestamps_token_id=ids("<|notimestamps|>"), alignment_heads=[[0, 0], [0, 1]],
        begin_suppress_tokens=[], suppress_tokens=[],
    )  # fmt: skip
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def test_whisper_transcribes_the_speech_with_word_timestamps_or_each_clip(tmp_path):
    pytest.importorskip("transformers")
    from csm_adapt.errors import CsmAdaptError
    from csm_adapt.segment.segmenter import SegmentOptions, segment_folder

    demo = sorted(DEMO.glob("*.wav"))
    recording(tmp_path / "in" / "talk.wav", demo[:3], [1.5, 1.5])
    whisper = tiny_whisper(tmp_path / "whisper")
    lengths = {"min_seconds": 1.0, "max_seconds": 4.0}
    summary = segment_folder(
        tmp_path / "in",
        tmp_path / "out",
        SegmentOptions(**lengths, whisper=str(whisper), language="fr", word_timestamps=True),
    )
    records = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert summary["clips"] == len(records) >= 2
    assert any(record["words"] for record in records)
    for record in records:
        # A random Whisper says random words, but each clip's text is its words, all inside it.
        assert re.sub(r"\s", "", record["text"]) == "".join(re.sub(r"\s", "", w["word"]) for w in record["words"])
        for word in record["words"]:
            assert set(word) == {"word", "start", "end"}
            assert 0 <= word["start"] <= word["end"] <= record["seconds"] + 1e-3

    segment_folder(tmp_path / "in", tmp_path / "out2", SegmentOptions(**lengths, whisper=str(whisper)))
    records = [json.loads(line) for line in (tmp_path / "out2" / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(isinstance(r["text"], str) and "words" not in r for r in records)

    with pytest.raises(CsmAdaptError, match="word timestamps come from Whisper"):
        SegmentOptions(word_timestamps=True)
    with pytest.raises(CsmAdaptError, match="cannot load the Whisper model"):
        segment_folder(tmp_path / "in", tmp_path / "out3", SegmentOptions(whisper=str(tmp_path / "nowhere")))
