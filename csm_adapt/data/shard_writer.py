"""Writing prepared samples as WebDataset tar shards (format: docs/data-format.md, csm_adapt.data.format).

Shards are plain tar files whose bytes depend only on their samples (fixed mtime, owner and mode),
so a resumed `prepare` produces exactly the shards of an uninterrupted one. A shard is written to a
temporary name and renamed: a file under a shard's name is always complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

import attrs
import numpy as np

from csm_adapt.data.format import CODES, META, META_ROWS, TEXT, member_name, sample_key
from csm_adapt.files import temp_path


@attrs.frozen(eq=False)
class PreparedSample:
    """One sample as stored: codes [32, F] int16 and text ids [T] int32 of all turns, in order."""

    id: str
    codes: np.ndarray
    text: np.ndarray
    meta: dict  # the META member: format.META_* keys

    @property
    def rows(self) -> int:
        return self.meta[META_ROWS]


@attrs.frozen
class WrittenShard:
    """What a reader needs to verify a written shard (format.ShardEntry's `bytes` and `sha256`)."""

    bytes: int
    sha256: str


def write_shard(path: Path, samples: Iterable[PreparedSample]) -> WrittenShard:
    tmp = temp_path(path)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for sample in samples:
                key = sample_key(sample.id)
                _add(tar, member_name(key, CODES), _npy(sample.codes))
                _add(tar, member_name(key, TEXT), _npy(sample.text))
                _add(tar, member_name(key, META), json.dumps(sample.meta, ensure_ascii=False).encode("utf-8"))
        written = file_digest(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written


def file_digest(path: Path) -> WrittenShard:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return WrittenShard(path.stat().st_size, digest.hexdigest())


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
