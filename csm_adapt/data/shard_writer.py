"""Writing prepared samples as WebDataset tar shards (format: the data contract, DATA.md).

Shards are plain tar files whose bytes depend only on their samples (fixed mtime, owner and mode),
so a resumed `prepare` produces exactly the shards of an uninterrupted one. A shard is written to a
temporary name and renamed: a file under a shard's name is always complete.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

import attrs
import numpy as np

# webdataset splits a member name into key and extension at the first dot of its basename, and a
# slash would make a folder: keys keep only word characters and dashes.
_KEY_UNSAFE = re.compile(r"[^\w-]")


def sample_key(sample_id: str) -> str:
    return _KEY_UNSAFE.sub("_", sample_id)


@attrs.frozen(eq=False)
class PreparedSample:
    """One sample as stored: codes [32, F] int16 and text ids [T] int32 of all turns, in order."""

    id: str
    codes: np.ndarray
    text: np.ndarray
    meta: dict  # the `<key>.json` member: id, source, turns, rows

    @property
    def rows(self) -> int:
        return self.meta["rows"]


def write_shard(path: Path, samples: Iterable[PreparedSample]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for sample in samples:
                key = sample_key(sample.id)
                _add(tar, f"{key}.codes.npy", _npy(sample.codes))
                _add(tar, f"{key}.text.npy", _npy(sample.text))
                _add(tar, f"{key}.json", json.dumps(sample.meta, ensure_ascii=False).encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
