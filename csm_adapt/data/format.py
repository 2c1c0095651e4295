"""The prepared-data format, owned here and nowhere else (specification: docs/data-format.md).

A prepared folder holds `train-NNNNNN.tar` / `val-NNNNNN.tar` WebDataset shards, `index.json` (what
the shards hold, and how to verify them) and `rejects.jsonl`. Every module that writes or reads
shards takes the file and member names, the index schema, the format version and the per-sample
meta keys from this module, so that a format change is made in one place and versioned.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs

from csm_adapt.config.structure import from_dict
from csm_adapt.data.storage import Store, member, open_store
from csm_adapt.errors import ConfigError, CsmAdaptError

# Version 2 added each shard's byte size and sha256 (so that readers can verify shards) and moved
# processing timings out of index.json (so that two prepares of the same data are byte-identical).
INDEX_VERSION = 2

INDEX = "index.json"
REJECTS = "rejects.jsonl"
SPLITS = ("train", "val")

# Members of one sample in a shard: `<key>.<member>`.
CODES = "codes.npy"  # int16 [NUM_CODEBOOKS, frames]: Mimi codes of all turns, concatenated
TEXT = "text.npy"  # int32 [tokens]: text token ids of all turns, concatenated
META = "json"  # UTF-8 JSON object, the META_* keys below
MEMBERS = (CODES, TEXT, META)

NUM_CODEBOOKS = 32
CODEBOOK_SIZE = 2048  # Mimi codes per codebook: every code is in [0, CODEBOOK_SIZE)

# Keys of a sample's META member.
META_ID = "id"  # the reader's sample id (with "-partN" when a long conversation was split)
META_SOURCE = "source"  # "file:line" of the metadata it came from
META_TURNS = "turns"  # list of turns, each with the TURN_* keys
META_ROWS = "rows"  # model rows the sample occupies: sum over turns of text_tokens + frames + 1

# Keys of one turn in META_TURNS.
TURN_SPEAKER = "speaker"
TURN_TEXT = "text"
TURN_TEXT_TOKENS = "text_tokens"  # how many of TEXT's ids are this turn's
TURN_FRAMES = "frames"  # how many of CODES' frames are this turn's
TURN_TARGET = "target"  # trained on (True) or context only (False)
TURN_AUDIO = "audio"
TURN_START = "start"
TURN_END = "end"

# webdataset splits a member name into key and extension at the first dot of its basename, and a
# slash would make a folder: keys keep only word characters and dashes.
_KEY_UNSAFE = re.compile(r"[^\w-]")


def sample_key(sample_id: str) -> str:
    """The key a sample is stored under in a shard."""
    return _KEY_UNSAFE.sub("_", sample_id)


def member_name(key: str, member: str) -> str:
    return f"{key}.{member}"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def turn_rows(text_tokens: int, frames: int) -> int:
    """Rows one turn occupies: its text rows, its audio frames and the EOS frame."""
    return text_tokens + frames + 1


@attrs.frozen(kw_only=True)
class ShardEntry:
    """One shard in index.json: what it holds and how to verify it."""

    name: str
    samples: int  # samples stored in it
    rows: tuple[int, ...]  # META_ROWS of each sample, in stored order
    frames: int
    seconds: float
    bytes: int  # file size
    sha256: str  # of the whole file


@attrs.frozen(kw_only=True)
class SplitEntry:
    shards: tuple[ShardEntry, ...] = ()


@attrs.frozen(kw_only=True)
class Index:
    """index.json; its presence means the prepared data are complete."""

    version: int
    data_hash: str  # of the data recipe that produced the shards
    text_tokenizer: str  # identity of the tokenizer / codec that produced them
    audio_codec: str
    num_codebooks: int
    max_rows: int
    data: dict[str, Any]  # the data recipe itself
    splits: dict[str, SplitEntry]
    summary: dict[str, Any]  # counts for people; nothing reads them back
    # What readers record about the data, by recipe key ("reader", "val_reader"): e.g. the speaker
    # numbering of the hf_datasets reader. Empty for readers that record nothing.
    reader_info: dict[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict:
        return attrs.asdict(self, value_serializer=_plain)

    def split(self, name: str) -> SplitEntry:
        return self.splits.get(name, SplitEntry())


def _plain(instance, attribute, value):
    return list(value) if isinstance(value, tuple) else value


def index_path(data_dir: Path | str | Store) -> Path | str:
    """index.json of a folder or URL, for messages."""
    return member(data_dir, INDEX)


def dump_index(index: Index) -> str:
    """The exact text of index.json (key order fixed, so equal indexes are equal bytes)."""
    return json.dumps(index.to_json(), ensure_ascii=False, indent=1) + "\n"


def read_index(data_dir: Path | str | Store) -> Index:
    """The parsed, checked index.json of `data_dir` (a folder, a URL or an open store)."""
    store = open_store(data_dir)
    path = store.member(INDEX)
    try:
        raw = json.loads(store.read_bytes(INDEX).decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise CsmAdaptError(f"{path}: not found; run `csm-adapt prepare` first") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CsmAdaptError(f"{path}: corrupt ({e}); run `csm-adapt prepare RECIPE --rebuild`") from None
    version = raw.get("version") if isinstance(raw, dict) else None
    if version != INDEX_VERSION:
        raise CsmAdaptError(
            f"{path}: format version {version!r}, this csm-adapt reads version {INDEX_VERSION} "
            "(docs/data-format.md); run `csm-adapt prepare RECIPE --rebuild` to prepare the data again"
        )
    try:
        return from_dict(Index, raw, "index.json")
    except ConfigError as e:
        raise CsmAdaptError(f"{path}: {e}") from None
