"""The `hf_datasets` reader: a Hugging Face dataset (hub id, or local parquet/arrow files or folder).

    [data.reader]
    name = "hf_datasets"
    dataset = "facebook/multilingual_librispeech"   # a hub id ...
    config = "french"
    split = "train"
    # path = "/data/myset"      # ... or local: a .parquet/.arrow file, a folder of them, a save_to_disk folder
    text = "transcript"         # column names
    audio = "audio"
    speaker = "speaker_id"      # optional; values (any type) are numbered 0, 1, ... by first appearance
    streaming = true            # read rows as they come instead of downloading the set first

Needs the `datasets` library: `pip install 'csm-adapt[hf]'`. The audio column may be an `Audio`
feature or a struct of `{bytes, path}` (what parquet holds) or a string path; `datasets` never
decodes it: the prepare step decodes the bytes (or opens the path, relative to the local folder)
with csm-adapt's own audio I/O, so broken clips are rejects like in every other reader, and it does
so only when it encodes the row. The speaker numbering is written to index.json (`reader_info`);
`speaker_map` (a JSON `{value: number}`) fixes it, e.g. to share one numbering between `reader`
and `val_reader`. A sample's id is the `id` column's value, or `<split>-<row>`; its source is
`<dataset or path>/<split>:row <n>`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from csm_adapt import hookimpl
from csm_adapt.errors import AudioError, CsmAdaptError
from csm_adapt.plugin_api import Sample, Turn

_ROWS_PER_BATCH = 1000  # metadata rows read per call (the audio column is never read with them)


def _one_source(instance, attribute, value) -> None:
    if (instance.dataset is None) == (instance.path is None):
        raise ValueError("give exactly one of `dataset` (a hub id) and `path` (local files)", attribute)


@attrs.frozen(kw_only=True)
class HFDatasetsOptions:
    dataset: str | None = None  # hub id, e.g. "facebook/multilingual_librispeech"
    path: Path | None = attrs.field(default=None, validator=_one_source)  # .parquet/.arrow file or folder
    config: str | None = None  # the hub dataset's configuration (subset), e.g. "french"
    split: str = "train"
    revision: str | None = None  # hub branch, tag or commit
    streaming: bool = False  # read rows as they arrive (nothing downloaded first; the audio is read twice)
    cache_dir: Path | None = None  # datasets' cache (default: HF_DATASETS_CACHE)
    text: str = "text"  # column names
    audio: str = "audio"
    speaker: str | None = None
    id: str | None = None
    start: str | None = None  # seconds: a span of a longer recording
    end: str | None = None
    speaker_map: Path | None = None  # JSON {speaker value: number}; values not in it get the next numbers


class HFDatasetsReader:
    def __init__(self, options: HFDatasetsOptions):
        self.options = options
        if options.path is not None and not options.path.exists():
            raise CsmAdaptError(f"{options.path}: no such file or folder (data.reader.path)")
        self.speakers = _read_speaker_map(options.speaker_map) if options.speaker_map else {}
        _import_datasets()  # fail at `validate` time when the extra is missing
        if options.path is not None:
            self.label = f"{options.path}" if options.path.is_file() else f"{options.path}/{options.split}"
        else:
            self.label = "/".join(filter(None, (options.dataset, options.config, options.split)))

    def read(self) -> Iterator[Sample]:
        o = self.options
        ds = self._load()
        columns = {key: getattr(o, key) for key in ("text", "audio", "speaker", "id", "start", "end")}
        columns = {key: column for key, column in columns.items() if column is not None}
        _check_columns(ds, columns, self.label)
        ds = _raw_audio(ds, o.audio)
        audio = _Audio(ds.select_columns([o.audio]), o.audio, o.streaming, _base_dir(o.path))
        meta = ds.select_columns([column for key, column in columns.items() if key != "audio"])
        row = 0
        for batch in meta.iter(batch_size=_ROWS_PER_BATCH):
            for i in range(len(batch[o.text])):
                yield self._sample(
                    {key: batch[column][i] for key, column in columns.items() if key != "audio"}, row, audio
                )
                row += 1

    def index_info(self) -> dict:
        """What prepare records in index.json: the speaker numbering (after `read()`)."""
        return {"speakers": dict(self.speakers)} if self.options.speaker is not None else {}

    def _sample(self, values: dict[str, Any], row: int, audio: _Audio) -> Sample:
        where = f"{self.label}:row {row}"
        text = values["text"]
        if not isinstance(text, str):
            raise CsmAdaptError(f"{where}: column {self.options.text!r}: expected a string, got {text!r}")
        turn = Turn(
            speaker=self._speaker(values.get("speaker")),
            text=text,
            audio=_RowAudio(audio, row, where),
            start=_seconds(values.get("start"), self.options.start, where),
            end=_seconds(values.get("end"), self.options.end, where),
        )
        sample_id = values.get("id")
        if "id" in values and (sample_id is None or str(sample_id) == ""):
            raise CsmAdaptError(f"{where}: column {self.options.id!r}: empty id")
        sample_id = f"{self.options.split}-{row}" if sample_id is None else str(sample_id)
        return Sample(id=sample_id, turns=(turn,), source=where)

    def _speaker(self, value: Any) -> int | None:
        if value is None:
            return None
        key = str(value)
        if key not in self.speakers:
            self.speakers[key] = max(self.speakers.values(), default=-1) + 1
        return self.speakers[key]

    def _load(self):
        datasets = _import_datasets()
        o = self.options
        cache = None if o.cache_dir is None else str(o.cache_dir)
        try:
            if o.dataset is not None:
                return datasets.load_dataset(
                    o.dataset, o.config, split=o.split, revision=o.revision, streaming=o.streaming, cache_dir=cache
                )
            if o.path.is_file():
                builder = {".parquet": "parquet", ".arrow": "arrow"}.get(o.path.suffix)
                if builder is None:
                    raise CsmAdaptError(f"{o.path}: expected a .parquet or .arrow file (data.reader.path)")
                return datasets.load_dataset(
                    builder, data_files=str(o.path), split="train", streaming=o.streaming, cache_dir=cache
                )
            if (o.path / "dataset_info.json").is_file() or (o.path / "dataset_dict.json").is_file():
                ds = datasets.load_from_disk(str(o.path))  # a save_to_disk folder
                if isinstance(ds, datasets.DatasetDict):
                    if o.split not in ds:
                        raise CsmAdaptError(f"{o.path}: no split {o.split!r} (splits: {', '.join(ds)})")
                    ds = ds[o.split]
                return ds.to_iterable_dataset() if o.streaming else ds
            # A folder of parquet/arrow files: datasets finds the splits from the file names.
            return datasets.load_dataset(str(o.path), split=o.split, streaming=o.streaming, cache_dir=cache)
        except CsmAdaptError:
            raise
        except Exception as e:  # datasets raises many types (hub, network, missing split, ...)
            raise CsmAdaptError(f"{self.label}: cannot load the dataset: {type(e).__name__}: {e}") from e


@attrs.frozen(eq=False)
class _RowAudio:
    """The audio of one row, fetched when prepare decodes it (an `AudioSource`)."""

    column: _Audio
    row: int
    where: str

    def fetch(self) -> bytes | Path:
        return self.column.fetch(self.row, self.where)

    def __str__(self) -> str:
        return self.where


class _Audio:
    """Reads the audio column by row: random access in an arrow table, or a forward stream."""

    def __init__(self, ds, column: str, streaming: bool, base: Path | None):
        self.ds, self.column, self.streaming, self.base = ds, column, streaming, base
        self._rows: Iterator | None = None
        self._next = 0  # the row `_rows` yields next

    def fetch(self, row: int, where: str) -> bytes | Path:
        value = self._stream(row, where) if self.streaming else self.ds[row][self.column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        if not value:
            raise AudioError(f"{where}: no audio (neither bytes nor a path)", reason="missing")
        path = Path(value)
        return path if path.is_absolute() or self.base is None else self.base / path

    def _stream(self, row: int, where: str) -> Any:
        # Prepare asks for rows in increasing order within a split, so the stream is restarted
        # (skipping to the row) only when a row before the current position is asked for.
        if self._rows is None or row < self._next:
            self._rows, self._next = iter(self.ds.skip(row)), row
        while True:
            item = next(self._rows, None)
            if item is None:
                raise AudioError(f"{where}: the stream ended before this row", reason="missing")
            self._next += 1
            if self._next - 1 == row:
                return item[self.column]


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise CsmAdaptError(
            "the hf_datasets reader needs the `datasets` library: pip install 'csm-adapt[hf]'"
        ) from None
    return datasets


def _check_columns(ds, columns: dict[str, str], label: str) -> None:
    names = ds.column_names
    if names is None:  # a stream whose features are unknown until read
        names = list(next(iter(ds)).keys())
    for key, column in columns.items():
        if column not in names:
            raise CsmAdaptError(
                f"{label}: no column {column!r} (data.reader.{key}); the columns are: {', '.join(names)}"
            )


def _raw_audio(ds, column: str):
    """The dataset with `column` left undecoded ({bytes, path}) when it is an Audio feature."""
    datasets = _import_datasets()
    feature = (ds.features or {}).get(column)
    if isinstance(feature, datasets.Audio) and feature.decode:
        return ds.cast_column(column, datasets.Audio(decode=False))
    return ds


def _base_dir(path: Path | None) -> Path | None:
    """Where relative audio paths in local files point: the data's folder."""
    if path is None:
        return None
    return path.parent if path.is_file() else path


def _seconds(value: Any, column: str | None, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CsmAdaptError(f"{where}: column {column!r}: expected a finite number of seconds, got {value!r}")
    return float(value)


def _read_speaker_map(path: Path) -> dict[str, int]:
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CsmAdaptError(f"{path}: cannot read the speaker map (data.reader.speaker_map): {e}") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in mapping.values()
    ):
        raise CsmAdaptError(f"{path}: expected a JSON object {{speaker: number >= 0}} (data.reader.speaker_map)")
    return mapping


@hookimpl
def register_dataset_readers(register):
    register("hf_datasets", HFDatasetsReader, options=HFDatasetsOptions)
