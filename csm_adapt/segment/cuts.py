"""Where to cut: speech regions (from voice-activity detection) grouped into clips at pauses.

Pure arithmetic on seconds, no audio. A clip is a run of consecutive speech regions; it ends at a
pause, never inside a region, so every cut point lies in a pause (or at the recording's edge).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Span:
    start: float  # seconds
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def group_regions(
    regions: list[Span], *, min_seconds: float, max_seconds: float, max_pause: float
) -> tuple[list[Span], list[Span]]:
    """(clips, dropped): consecutive `regions` (sorted, disjoint) grouped into clips.

    A region joins the clip before it while the clip stays within `max_seconds` and the pause
    between them is at most `max_pause`; otherwise the clip ends and a new one starts. Clips
    shorter than `min_seconds` (and regions longer than `max_seconds`) are dropped.
    """
    clips: list[Span] = []
    dropped: list[Span] = []
    current: Span | None = None

    def close(span: Span | None) -> None:
        if span is not None:
            (clips if min_seconds <= span.seconds <= max_seconds else dropped).append(span)

    for region in regions:
        if (
            current is not None
            and region.start - current.end <= max_pause
            and region.end - current.start <= max_seconds
        ):
            current = Span(current.start, region.end)
        else:
            close(current)
            current = region
    close(current)
    return clips, dropped


def length_histogram(clips: list[Span], bin_seconds: float = 2.0) -> dict[str, int]:
    """Clip counts by length, in bins of `bin_seconds` ("0-2", "2-4", ...), empty bins included."""
    if not clips:
        return {}
    bins = [0] * (int(max(c.seconds for c in clips) // bin_seconds) + 1)
    for clip in clips:
        bins[int(clip.seconds // bin_seconds)] += 1
    return {f"{i * bin_seconds:g}-{(i + 1) * bin_seconds:g}": n for i, n in enumerate(bins)}
