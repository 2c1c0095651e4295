"""A csm-adapt dataset reader for Mozilla Common Voice.

A Common Voice language folder holds `<split>.tsv` files (a header row, then one clip per row with
columns `client_id`, `path`, `sentence`, ...) and the audio in `clips/`. Use it from a recipe:

    [data.reader]
    name = "commonvoice"
    root = "/data/cv-corpus-17.0/fr"
    split = "train"
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import attrs

from csm_adapt import hookimpl
from csm_adapt.errors import CsmAdaptError
from csm_adapt.plugin_api import Sample, Turn

COLUMNS = ("client_id", "path", "sentence")


@attrs.frozen
class CommonVoiceOptions:
    root: Path  # the language folder, containing <split>.tsv and clips/
    split: str = "train"  # reads <root>/<split>.tsv


class CommonVoiceReader:
    def __init__(self, options: CommonVoiceOptions):
        self.options = options
        self.tsv = options.root / f"{options.split}.tsv"
        # Checked here so that `csm-adapt validate` catches a wrong root before any work starts.
        if not self.tsv.is_file():
            raise CsmAdaptError(f"{self.tsv}: no such file (data.reader.root / data.reader.split)")

    def read(self) -> Iterator[Sample]:
        # Speakers are numbered by first appearance: the same TSV always gives the same numbers.
        speakers: dict[str, int] = {}
        with open(self.tsv, newline="", encoding="utf-8") as f:
            # Sentences contain quotes; Common Voice does not quote fields.
            rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            missing = [column for column in COLUMNS if column not in (rows.fieldnames or [])]
            if missing:
                raise CsmAdaptError(f"{self.tsv}:1: missing column(s) {', '.join(missing)}")
            for row in rows:
                source = f"{self.tsv}:{rows.line_num}"
                if not row["path"] or not (row["sentence"] or "").strip():
                    raise CsmAdaptError(f"{source}: empty path or sentence")
                speaker = speakers.setdefault(row["client_id"], len(speakers))
                audio = self.options.root / "clips" / row["path"]
                yield Sample(
                    id=Path(row["path"]).stem, turns=(Turn(speaker, row["sentence"].strip(), audio),), source=source
                )


@hookimpl
def register_dataset_readers(register):
    register("commonvoice", CommonVoiceReader, options=CommonVoiceOptions)
