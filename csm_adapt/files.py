"""Writing files so that nothing is lost: temporary names and atomic renames, stale temporary files
cleaned up, one process per output directory (an OS lock), and one clear message when a write fails.

Imports nothing from csm_adapt but `errors`, so every subpackage may use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from csm_adapt.errors import CsmAdaptError

LOCK_FILE = ".lock"
# `.<name>.<pid>.tmp`: what `temp_path` names; any such file not of this process is a leftover.
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")


def is_temp_name(name: str) -> bool:
    """True for a name `temp_path` gives (of any process)."""
    return _TEMP.match(name) is not None


def temp_path(path: Path) -> Path:
    """Where to write `path` before renaming it into place (one name per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text_atomic(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write via a temporary file and a rename, so a killed process never leaves a half-written file."""
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding=encoding)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete `temp_path` leftovers of other (killed) processes in `directory`; call it while holding
    the directory's lock, which makes every other process's temporary file a leftover."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = _TEMP.match(path.name)
        if match and int(match.group(1)) != os.getpid() and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_like_new_file(path: Path) -> None:
    """Give a file made by `tempfile.mkstemp` (always 0600) the mode a plain `open` would have."""
    os.chmod(path, 0o666 & ~umask())


class LockedError(CsmAdaptError):
    pass


class DirLock:
    """An exclusive OS lock (flock) on a directory, held by this process until `release` or exit.

    The lock lives in `<directory>/.lock`, which records the holder's PID for the refusal message.
    The kernel drops the lock when the process dies, so a crash never leaves a stale lock behind.
    Re-entrant within a process: a nested DirLock on a directory this process holds is a no-op.
    `label` names what the lock stands for in the refusal message (default: the directory).
    """

    _held: dict[Path, int] = {}  # this process's locks: directory -> lock file descriptor

    def __init__(self, directory: Path, what: str, label: str | None = None):
        self.directory, self.what = Path(directory).absolute(), what
        self.label = label or str(self.directory)
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        if self.directory in DirLock._held:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise LockedError(
                    f"{self.label} is in use by another {self.what} (PID {holder}); "
                    "wait for it to finish or stop it, or use another directory"
                ) from None
            # The holder before us may have unlinked the file after we opened it: lock the live one.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = DirLock._held[self.directory] = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding it, so that the folder is left as it was found.
        (self.directory / LOCK_FILE).unlink(missing_ok=True)
        del DirLock._held[self.directory]
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def free_space(path: Path) -> str:
    """Free space on the filesystem holding `path`, for messages."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown free space"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return ""


class WriteError(CsmAdaptError):
    pass


# Errors of a full (or unwritable) disk; other OSErrors are bugs or bad input and keep their traceback.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
_OS_ERROR_IN_MESSAGE = re.compile(r"os error (\d+)")  # how safetensors (Rust) reports an I/O error


def no_space_errno(error: BaseException) -> int | None:
    """The errno when `error` (or what it was raised from) is a full or read-only disk, else None."""
    return _no_space(error)[0]


def _no_space(error: BaseException) -> tuple[int | None, str | None]:
    """(errno, file) when `error`, or an error it was raised from, is a full disk. torch.save into a
    Python file raises RuntimeError from the OSError of the write; safetensors only names the errno."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_SPACE:
            return seen.errno, seen.filename
        match = _OS_ERROR_IN_MESSAGE.search(str(seen))
        if match and int(match.group(1)) in _NO_SPACE:
            return int(match.group(1)), None
        seen = seen.__cause__ or seen.__context__
    return None, None


@contextlib.contextmanager
def reported_writes(path: Path, kept: str | Callable[[], str], resume: str) -> Iterator[None]:
    """Turn a disk-full OSError raised while writing under `path` into one message: the file, the free
    space, what was kept and the command that continues (`kept`, or `kept()` at the time of the error,
    and `resume` say those two)."""
    try:
        yield
    except Exception as e:
        code, filename = _no_space(e)
        if code is None:
            raise
        reason = "read-only filesystem" if code == errno.EROFS else "no space left (disk full or file size limit)"
        raise WriteError(
            f"could not write {filename or path}: {reason} ({free_space(Path(path))}). "
            f"{kept() if callable(kept) else kept}. Free some space, then continue with: {resume}"
        ) from None
