"""Where to cut when the words are known: clips whose edges never fall inside a word.

Pure arithmetic on seconds, like `csm_adapt.segment.cuts`: the speech regions voice-activity
detection found, the words a transcriber heard (with their times) and the clip length range give
the clips, and each clip's words. A cut goes where no word is:

1. Each pause between two regions is a cut when part of it lies between words; that part is left
   out of both clips (a word reaching into the pause stays whole in its clip). A pause that lies
   inside a word, because a transcriber's word takes in the silence after it or because
   voice-activity detection split speech longer than `max_seconds` where it had to, moves to the
   middle of the nearest gap between two words (the one before it, when the nearest one would make
   what lies before the cut longer than `max_seconds`).
2. What lies between two cuts and is still longer than `max_seconds` is split in the middle of its
   longest gap between words (the most central of equal ones; one leaving `min_seconds` on both
   sides when there is one), again until every part fits.
3. The parts are grouped into clips as `group_regions` groups regions.

Without words this is `group_regions` itself.
"""

from __future__ import annotations

import bisect

import attrs

from csm_adapt.segment.cuts import Span, group_regions

WHISPER_SECONDS = 30.0  # what Whisper hears at once


@attrs.frozen
class Word:
    text: str  # as transcribed, its leading space kept: a clip's text is its words joined (`text_of`)
    start: float  # seconds, start <= end
    end: float


def text_of(words: list[Word]) -> str:
    return "".join(word.text for word in words).strip()


def windows(regions: list[Span], *, max_pause: float, seconds: float = WHISPER_SECONDS) -> list[Span]:
    """The stretches to transcribe: consecutive regions joined over pauses up to `max_pause` (which
    no clip spans beyond) while they fit in `seconds`; a longer region is a stretch of its own."""
    fitting, longer = group_regions(regions, min_seconds=0.0, max_seconds=seconds, max_pause=max_pause)
    return sorted(fitting + longer, key=lambda span: span.start)


def word_gaps(words: list[Word], start: float, end: float) -> list[Span]:
    """Where no word is, from `start` to `end` (which hold all words): the gap before the first word,
    the gap between each two (of no length where they touch, none where they overlap), the gap after
    the last. Any point of a gap may be a cut."""
    gaps, reach = [], start
    for word in sorted(words, key=lambda w: (w.start, w.end)):
        if word.start >= reach:
            gaps.append(Span(reach, word.start))
        reach = max(reach, word.end)
    gaps.append(Span(reach, end))
    return gaps


def align_cuts(
    regions: list[Span], words: list[Word], *, min_seconds: float, max_seconds: float, max_pause: float
) -> tuple[list[Span], list[Span]]:
    """(clips, dropped) as `group_regions` returns them, with no clip edge inside a word.

    `regions` are sorted and disjoint; `words` may come in any order and overlap. Every word lies
    in exactly one of the clips and dropped spans (`words_in` gives each clip its words).
    """
    if not regions:
        return [], []
    start = min([regions[0].start, *(word.start for word in words)])
    end = max([regions[-1].end, *(word.end for word in words)])
    gaps = word_gaps(words, start, end)
    between = gaps[1:-1]  # the gaps between two words: the only places a cut may move to
    cuts = _pause_cuts(regions, gaps, between, start, max_seconds)
    edges = [start, *(edge for cut in cuts for edge in (cut.start, cut.end)), end]
    parts = [Span(a, b) for a, b in zip(edges[::2], edges[1::2])]
    middles = [(gap.start + gap.end) / 2 for gap in between]  # sorted, as the gaps are
    parts = [piece for part in parts for piece in _split(part, between, middles, min_seconds, max_seconds)]
    return group_regions(parts, min_seconds=min_seconds, max_seconds=max_seconds, max_pause=max_pause)


def words_in(clips: list[Span], words: list[Word]) -> list[list[Word]]:
    """Each clip's words, in order: those inside it (a word of no length on the edge two clips share
    goes to the first)."""
    ordered = sorted(words, key=lambda w: (w.start, w.end))
    result, i = [], 0
    for clip in sorted(clips, key=lambda c: c.start):
        while i < len(ordered) and ordered[i].start < clip.start:
            i += 1  # words of a dropped span, or of no clip at all
        first = i
        while i < len(ordered) and ordered[i].end <= clip.end:
            i += 1
        result.append(ordered[first:i])
    return result


def _pause_cuts(
    regions: list[Span], gaps: list[Span], between: list[Span], start: float, max_seconds: float
) -> list[Span]:
    """One cut (the stretch left out between two clips, possibly of no length) for each pause
    between regions that can have one, in order. `gaps` and `between` are sorted and disjoint."""
    gap_ends, between_ends = [gap.end for gap in gaps], [gap.end for gap in between]
    cuts: list[tuple[Span, bool]] = []  # (cut, moved off its pause)
    for before, after in zip(regions, regions[1:]):
        pause = Span(before.end, after.start)
        free, k = [], bisect.bisect_left(gap_ends, pause.start)
        while k < len(gaps) and gaps[k].start <= pause.end:
            free.append(Span(max(gaps[k].start, pause.start), min(gaps[k].end, pause.end)))
            k += 1
        if free:
            cut, moved = max(free, key=lambda span: span.seconds), False
        elif between:
            # No gap meets the pause: the nearest are the last one before it and the first after it.
            k = bisect.bisect_left(between_ends, pause.start)
            nearby = between[max(k - 1, 0) : k + 1]
            nearby.sort(
                key=lambda gap: max(gap.start - pause.end, pause.start - gap.end)
            )  # the earlier of equals first
            since = cuts[-1][0].end if cuts else start
            middles = [(gap.start + gap.end) / 2 for gap in nearby]
            middle = next((m for m in middles if m - since <= max_seconds), middles[0])
            cut, moved = Span(middle, middle), True
        else:
            continue  # the pause lies inside the only word
        # Cuts that meet (one word holds two pauses; a moved cut reached the next pause) are one cut:
        # a pause's own cut is kept over a moved one.
        while cuts and cut.start <= cuts[-1][0].end and cuts[-1][1] and not moved:
            cuts.pop()
        if not cuts or cut.start > cuts[-1][0].end:
            cuts.append((cut, moved))
    return [cut for cut, _ in cuts]


def _split(part: Span, between: list[Span], middles: list[float], min_seconds: float, max_seconds: float) -> list[Span]:
    """`part` cut in the middle of gaps between words until each piece fits in `max_seconds`."""
    if part.seconds <= max_seconds:
        return [part]
    inside = range(bisect.bisect_right(middles, part.start), bisect.bisect_left(middles, part.end))
    if not inside:
        return [part]  # one word from edge to edge: dropped as too long
    roomy = [i for i in inside if min(middles[i] - part.start, part.end - middles[i]) >= min_seconds] or inside
    centre = (part.start + part.end) / 2
    cut = middles[max(roomy, key=lambda i: (between[i].seconds, -abs(middles[i] - centre)))]
    return [
        piece
        for side in (Span(part.start, cut), Span(cut, part.end))
        for piece in _split(side, between, middles, min_seconds, max_seconds)
    ]
