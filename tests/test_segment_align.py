"""Cutting between words (`csm_adapt.segment.align`): hand-made regions and words, then many random ones."""

from __future__ import annotations

import random

import pytest

from csm_adapt.segment.align import Word, align_cuts, text_of, windows, word_gaps, words_in
from csm_adapt.segment.cuts import Span, group_regions


def said(*words: tuple[str, float, float]) -> list[Word]:
    return [Word(f" {text}", start, end) for text, start, end in words]


def cut(regions, words, min_seconds=1.0, max_seconds=3.0, max_pause=1.0):
    clips, dropped = align_cuts(regions, words, min_seconds=min_seconds, max_seconds=max_seconds, max_pause=max_pause)
    return clips, dropped, [text_of(w) for w in words_in(clips, words)]


def test_without_words_the_cuts_are_the_pauses_voice_activity_detection_found():
    regions = [Span(0.5, 2.0), Span(2.4, 4.0), Span(4.3, 6.5), Span(8.5, 9.0), Span(9.2, 9.6), Span(12, 30)]
    for lengths in [(1.0, 4.0, 1.0), (2.0, 4.0, 0.3), (0.1, 20.0, 5.0)]:
        expected = group_regions(regions, min_seconds=lengths[0], max_seconds=lengths[1], max_pause=lengths[2])
        assert cut(regions, [], *lengths)[:2] == expected


def test_a_pause_inside_a_word_moves_to_the_nearest_gap_between_words():
    # Whisper's words touch (it gives each pause to a word): "c" takes in the pause at 2.0..2.5.
    regions = [Span(0, 2), Span(2.5, 5)]
    words = said(("a", 0.2, 1.0), ("b", 1.0, 1.8), ("c", 1.8, 2.6), ("d", 2.6, 3.5), ("e", 3.5, 4.8))
    assert group_regions(regions, min_seconds=1, max_seconds=3, max_pause=1)[0] == regions  # would cut "c"
    # The gap after "c" (0.1 s from the pause) is nearer than the one before it (0.2 s).
    assert cut(regions, words) == ([Span(0, 2.6), Span(2.6, 5)], [], ["a b c", "d e"])


def test_a_word_reaching_into_a_pause_stays_whole_and_the_rest_of_the_pause_is_left_out():
    regions = [Span(0, 2), Span(2.5, 5)]
    words = said(("a", 0.2, 1.0), ("b", 1.0, 2.2), ("c", 2.7, 3.5))
    assert cut(regions, words) == ([Span(0, 2.2), Span(2.5, 5)], [], ["a b", "c"])
    # A word voice-activity detection missed, inside the pause, goes with the side of the longer gap.
    regions = [Span(0, 2), Span(3, 5)]
    words = said(("a", 0.5, 1.5), ("x", 2.3, 2.6), ("b", 3.2, 4.5))
    assert cut(regions, words) == ([Span(0, 2.6), Span(3, 5)], [], ["a x", "b"])


def test_speech_split_where_voice_activity_detection_had_to_is_cut_between_words_within_the_length():
    # 23 s without a pause, split by voice-activity detection at 10 and 20 s, both inside words.
    regions = [Span(0, 10), Span(10, 20), Span(20, 23)]
    words = said(*((f"w{i}", 0.125 + 0.5 * i, 0.625 + 0.5 * i) for i in range(45)))
    clips, dropped, texts = cut(regions, words, min_seconds=1, max_seconds=10)
    # The gaps after 10 and 20 s are the nearer ones, but cutting there makes the clip before 10.125 s.
    assert clips == [Span(0, 9.625), Span(9.625, 19.625), Span(19.625, 23)] and dropped == []
    assert texts == [" ".join(f"w{i}" for i in range(a, b)).strip() for a, b in [(0, 19), (19, 39), (39, 45)]]


def test_speech_longer_than_a_clip_is_split_at_its_longest_gap_then_at_the_most_central():
    words = said(*((f"w{i}", 0.25 + 0.5 * i, 0.75 + 0.5 * i) for i in range(24)))  # 0.25 .. 12.25
    words += said(*((f"v{i}", 12.5 + 0.5 * i, 13.0 + 0.5 * i) for i in range(24)))  # a 0.25 s gap, then to 24.5
    clips, dropped, texts = cut([Span(0, 25)], words, min_seconds=2, max_seconds=10)
    # 12.375 (the longest gap), then 12.375 s and 12.625 s halves at the gaps nearest their middles.
    assert clips == [Span(0, 6.25), Span(6.25, 12.375), Span(12.375, 18.5), Span(18.5, 25)] and dropped == []
    assert texts[1] == " ".join(f"w{i}" for i in range(12, 24))
    # A word longer than a clip cannot be cut: dropped whole with the region it fills.
    assert cut([Span(0, 12)], said(("long", 0.5, 11.5)), max_seconds=10)[:2] == ([], [Span(0, 12)])


def test_tiny_gaps_overlapping_words_and_the_last_word_past_the_speech():
    regions = [Span(0, 2.2), Span(2.4, 4.2)]
    words = said(("a", 0.5, 1.48), ("b", 1.5, 2.9), ("c", 2.92, 4.0))
    clips, _, texts = cut(regions, words)
    assert clips == [Span(0, pytest.approx(2.91)), Span(pytest.approx(2.91), 4.2)] and texts == ["a b", "c"]
    # Overlapping words leave no gap between them: the cut moves past both.
    words = said(("a", 0.2, 1.5), ("b", 1.3, 2.8), ("c", 2.8, 3.5))
    assert cut([Span(0, 1.4), Span(1.45, 4)], words)[::2] == ([Span(0, 2.8), Span(2.8, 4)], ["a b", "c"])
    # Whisper's last word ends after the speech voice-activity detection found: the clip takes it whole.
    words = said(("a", 0.2, 1.8), ("b", 3.1, 4.7))
    assert cut([Span(0, 2), Span(3, 4.5)], words, max_seconds=5, max_pause=0.5)[::2] == (
        [Span(0, 2), Span(3, 4.7)],
        ["a", "b"],
    )


def test_two_pauses_in_one_word_make_one_cut_and_a_pause_keeps_its_own_cut():
    regions = [Span(0, 1), Span(1.2, 1.4), Span(1.6, 4)]
    words = said(("a", 0.1, 0.5), ("b", 0.5, 3.5), ("c", 3.5, 3.9))
    assert cut(regions, words, min_seconds=0.3, max_seconds=3.6) == (
        [Span(0, 0.5), Span(0.5, 4)],
        [],
        ["a", "b c"],
    )
    # The first pause moves to the gap after "b", which the second pause meets: the second's own cut stays.
    regions = [Span(0, 1), Span(1.2, 2), Span(2.2, 4)]
    words = said(("b", 0.1, 2.1), ("c", 2.3, 3.9))
    assert cut(regions, words, min_seconds=0.5)[::2] == ([Span(0, 2.1), Span(2.2, 4)], ["b", "c"])


def test_words_are_transcribed_in_windows_of_speech_joined_over_short_pauses():
    regions = [Span(0, 10), Span(10.5, 20), Span(20.4, 29), Span(29.5, 35), Span(38, 40), Span(40.2, 75)]
    assert windows(regions, max_pause=1.5) == [Span(0, 29), Span(29.5, 35), Span(38, 40), Span(40.2, 75)]
    assert word_gaps(said(("a", 1, 2), ("b", 2, 3), ("c", 2.5, 2.7), ("d", 4, 5)), 0, 6) == [
        Span(0, 1),
        Span(2, 2),
        Span(3, 4),
        Span(5, 6),
    ]


def inside(word: Word, span: Span) -> bool:
    return span.start <= word.start and word.end <= span.end


def random_case(rng: random.Random) -> tuple[list[Span], list[Word], float, float, float]:
    """Speech regions, and words over them the way a transcriber times them: mostly touching, some
    with gaps, overlapping, of no length, reaching into pauses or lying in them."""
    regions, t = [], rng.uniform(0, 1)
    for _ in range(rng.randint(1, 12)):
        length = rng.choice([rng.uniform(0.2, 3), rng.uniform(3, 25)])
        regions.append(Span(t, t + length))
        t += length + rng.choice([0.0, rng.uniform(0.01, 0.3), rng.uniform(0.3, 3)])
    words, t = [], regions[0].start + rng.uniform(0, 0.3)
    while t < regions[-1].end:
        length = rng.choice([0.0, rng.uniform(0.05, 0.8), rng.uniform(0.05, 0.8), rng.uniform(0.8, 3)])
        words.append(Word(f" w{len(words)}", t, t + length))
        t += length + rng.choice([0.0, 0.0, -min(length, 0.1), rng.uniform(0, 0.05), rng.uniform(0.2, 1.5)])
    min_seconds = rng.uniform(0.5, 3)
    return regions, words, min_seconds, min_seconds + rng.uniform(0, 15), rng.uniform(0.2, 2)


@pytest.mark.parametrize("seed", range(8))
def test_no_cut_falls_inside_a_word_and_every_word_is_in_one_clip_or_dropped_span(seed):
    rng = random.Random(seed)
    for _ in range(250):
        regions, words, min_seconds, max_seconds, max_pause = random_case(rng)
        clips, dropped = align_cuts(
            regions, words, min_seconds=min_seconds, max_seconds=max_seconds, max_pause=max_pause
        )
        assert all(min_seconds <= c.seconds <= max_seconds for c in clips)
        spans = sorted(clips + dropped, key=lambda s: s.start)
        assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))
        for edge in {e for span in spans for e in (span.start, span.end)}:
            assert not any(w.start < edge < w.end for w in words), edge
        for word in words:
            holders = [span for span in spans if inside(word, span)]
            assert len(holders) == 1 or (word.start == word.end and len(holders) == 2), word
        for region in regions:  # the speech is all in clips or dropped spans: only pauses are left out
            covered = sum(max(0.0, min(s.end, region.end) - max(s.start, region.start)) for s in spans)
            assert covered == pytest.approx(region.seconds)
        held = words_in(clips, words)
        assert all(inside(w, clip) for clip, mine in zip(clips, held) for w in mine)
        assert sorted(w.text for mine in held for w in mine) == sorted(
            w.text for w in words if any(inside(w, clip) for clip in clips)
        )
