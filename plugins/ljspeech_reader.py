"""The `ljspeech` reader: `<root>/metadata.csv` (pipe-separated, no header) and `<root>/wavs/<id>.wav`.

    [data.reader]
    name = "ljspeech"
    root = "/data/LJSpeech-1.1"

Columns are `id|text|normalized_text` (the normalized text is used when non-empty; a two-column
`id|text` file works too) or, with `columns = "id|speaker|text"`, a speaker number per clip.
Fields are never quoted: quotes belong to the text (csv.QUOTE_NONE), and "NA" stays "NA".
Speakers come from that column, from `speaker` (one for every clip), from `speakers` (a JSON file
`{clip id: speaker}`, like the demo set's speakers.json), or are None.
The file is UTF-8 (a byte-order mark is dropped) unless `encoding` names another. A line that
cannot be used (too many or too few fields, an id leading outside `wavs/`) is rejected
(rejects.jsonl) and the other lines are kept.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import attrs

from csm_adapt import hookimpl
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import Malformed, Sample, Turn
from csm_adapt_plugins._records import check_encoding, inside_root, read_text, sample_or_malformed

ID_TEXT_NORMALIZED = "id|text|normalized_text"
ID_SPEAKER_TEXT = "id|speaker|text"


def _one_speaker_source(instance, attribute, value) -> None:
    sources = [instance.columns == ID_SPEAKER_TEXT, instance.speaker is not None, instance.speakers is not None]
    if sum(sources) > 1:
        raise ValueError("give speakers one way only: the id|speaker|text column, `speaker` or `speakers`", attribute)


@attrs.frozen(kw_only=True)
class LJSpeechOptions:
    root: Path  # holds the metadata file and wavs/
    metadata: str = "metadata.csv"  # relative to root
    columns: Literal["id|text|normalized_text", "id|speaker|text"] = ID_TEXT_NORMALIZED
    speaker: int | None = None  # one speaker for every clip
    speakers: Path | None = attrs.field(default=None, validator=_one_speaker_source)  # JSON {id: speaker}
    encoding: str = attrs.field(default="utf-8", validator=check_encoding)  # of the metadata file


class LJSpeechReader:
    def __init__(self, options: LJSpeechOptions):
        self.options = options
        self.metadata = options.root / options.metadata
        if not self.metadata.is_file():
            raise CsmAdaptError(f"{self.metadata}: no such file (data.reader.root / data.reader.metadata)")
        self.speakers = _read_speakers(options.speakers) if options.speakers else None

    def read(self) -> Iterator[Sample | Malformed]:
        # newline=None: lines end at \n, \r\n or \r, as when iterating over a file opened in text mode.
        lines = io.StringIO(read_text(self.metadata, self.options.encoding), newline=None)
        for line, raw in enumerate(lines, start=1):
            if raw.strip():
                where = f"{self.metadata}:{line}"
                yield sample_or_malformed(where, self._sample, raw.rstrip("\r\n").split("|"), where)

    def _sample(self, fields: list[str], where: str) -> Sample:
        # A plain split is csv.QUOTE_NONE: quotes are part of the text, never field delimiters.
        clip_id = fields[0].strip()
        speaker = self.options.speaker
        if self.options.columns == ID_SPEAKER_TEXT:
            if len(fields) != 3:
                raise CsmAdaptError(f"{where}: expected 3 fields id|speaker|text, got {len(fields)}")
            speaker, text = _speaker(fields[1], where), fields[2]
        else:
            if len(fields) not in (2, 3):
                raise CsmAdaptError(f"{where}: expected 2 or 3 fields id|text|normalized_text, got {len(fields)}")
            text = fields[2] if len(fields) == 3 and fields[2].strip() else fields[1]
        if not clip_id:
            raise CsmAdaptError(f"{where}: empty clip id")
        audio = inside_root(self.options.root / "wavs", f"{clip_id}.wav", where, absolute_paths=None)
        if self.speakers is not None:
            if clip_id not in self.speakers:
                raise CsmAdaptError(f"{where}: clip {clip_id!r} is not in {self.options.speakers}")
            speaker = self.speakers[clip_id]
        return Sample(id=clip_id, turns=(Turn(speaker, text.strip(), audio),), source=where)


def _speaker(field: str, where: str) -> int:
    try:
        return int(field)
    except ValueError:
        raise CsmAdaptError(f"{where}: speaker column: expected an integer, got {field!r}") from None


def _read_speakers(path: Path) -> dict[str, int]:
    try:
        speakers = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError) as e:
        raise CsmAdaptError(f"{path}: cannot read the speakers file (data.reader.speakers): {e}") from None
    if not isinstance(speakers, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in speakers.values()
    ):
        raise CsmAdaptError(f"{path}: expected a JSON object {{clip id: integer speaker}} (data.reader.speakers)")
    return speakers


@hookimpl
def register_dataset_readers(register):
    register("ljspeech", LJSpeechReader, options=LJSpeechOptions)
