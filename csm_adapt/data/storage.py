"""Where prepared data live: a local folder, or a URL that fsspec opens (s3://, gs://, hf://, memory://, ...).

`open_store(data.out, data.storage_options)` gives a `Store`: the operations prepare, the loader and
evaluation need, on names inside the folder (`train-000000.tar`, `.progress/recipe.json`). Both kinds
keep the promises of docs/data-format.md ("Data at a URL" says how each holds for a URL):

- A file is complete under its name, or absent. Local: written under a temporary name, then renamed.
  Object stores (`OBJECT_STORES`): one PUT, or a multipart upload completed at the end, makes an
  object appear only once whole, so a finished local file is uploaded straight to its name. Other
  fsspec filesystems: uploaded to the temporary name `.<name>.<pid>.tmp`, then moved.
- One writer per location. Local: an OS lock on the folder (`files.DirLock`). URL: an OS lock on a
  local file named after the URL (so two processes of one machine exclude each other, and the lock
  dies with its holder), then a `.lock` object at the URL created with an exclusive create, which
  refuses the processes of other machines. That create is atomic where the store has a conditional
  PUT (S3 and compatible stores: If-None-Match); elsewhere fsspec checks, then writes.
- Temporary files a killed writer left are deleted by the next lock holder (on S3, also the
  incomplete multipart uploads under the prefix, which are invisible but billed).

Remote stores need their fsspec implementation: s3fs for s3:// and gcsfs for gs:// come with
`pip install 'csm-adapt[remote]'`; hf:// and memory:// are built into fsspec / huggingface_hub.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from csm_adapt.config.structure import is_url
from csm_adapt.errors import CsmAdaptError
from csm_adapt.files import (
    LOCK_FILE,
    DirLock,
    LockedError,
    is_temp_name,
    remove_stale_temps,
    temp_path,
    write_text_atomic,
)

T = TypeVar("T")

# Protocols whose writes are atomic per object: a PUT (or a completed multipart upload) on S3 and GCS,
# a block list commit on Azure, a commit on the Hugging Face hub.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hf"})
# The fsspec implementations `pip install 'csm-adapt[remote]'` brings.
REMOTE_EXTRA = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


class StorageError(CsmAdaptError):
    """A URL that cannot be reached, read or written (credentials, network, a missing package)."""


class LocalStore:
    """A folder on this machine's file system."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def member(self, name: str) -> Path:
        """How the file `name` is shown in messages (and opened by others): its path."""
        return self.root / name

    @property
    def write_dir(self) -> Path:
        """The local folder files are written in first (for disk-full messages)."""
        return self.root

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()  # FileNotFoundError when absent

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def sizes(self) -> dict[str, int]:
        """Name -> size in bytes of every file directly in the folder."""
        if not self.root.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in self.root.iterdir() if p.is_file()}

    def write_text(self, name: str, text: str) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)

    def write_file(self, name: str, make: Callable[[Path], T]) -> T:
        """Have `make(path)` write the file `name` (atomically: a temporary name, then a rename)."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return make(path)

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def remove_tree(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)

    def remove_stale_temps(self, folder: str = "", owned: Callable[[str], bool] | None = None) -> list[str]:
        """Delete the temporary files of killed writers in `folder` (`owned`: see RemoteStore's)."""
        return [str(p) for p in remove_stale_temps(self.root / folder)]

    def lock(self, what: str) -> DirLock:
        return DirLock(self.root, what)

    def close(self) -> None:
        pass


class RemoteStore:
    """A folder at a URL, through fsspec. Picklable: the filesystem is made again in each process
    (fsspec's async clients do not survive a fork into DataLoader workers)."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = str(url).rstrip("/")
        self.protocol = self.url.split("://", 1)[0].split("::")[-1]
        self.options = dict(options or {})
        self._fs = self._root = self._pid = None
        self._staging: Path | None = None
        self.fs  # noqa: B018 - a missing package or a bad option fails here, before any work

    def __str__(self) -> str:
        return self.url

    def __getstate__(self) -> dict:
        return {"url": self.url, "protocol": self.protocol, "options": self.options}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _fs=None, _root=None, _pid=None, _staging=None)

    @property
    def fs(self):
        if self._fs is None or self._pid != os.getpid():
            self._fs, self._root = _filesystem(self.url, self.options)
            self._pid = os.getpid()
        return self._fs

    def _path(self, name: str) -> str:
        self.fs  # noqa: B018 - sets _root
        return f"{self._root}/{name}" if name else self._root

    def member(self, name: str) -> str:
        return f"{self.url}/{name}"

    @contextlib.contextmanager
    def _calls(self, name: str = "", write: bool = False) -> Iterator[None]:
        """Turn what the filesystem raises (no credentials, access denied, no connection, ...) into
        one line naming the URL; a file missing when reading stays FileNotFoundError, for the callers
        to handle (when writing, it means a missing bucket: an error like the others)."""
        try:
            yield
        except FileNotFoundError as e:
            if not write:
                raise
            raise StorageError(f"{self.member(name) if name else self.url}: {type(e).__name__}: {e}") from e
        except (FileExistsError, CsmAdaptError):
            raise
        except Exception as e:
            raise StorageError(
                f"{self.member(name) if name else self.url}: {type(e).__name__}: {e} "
                "(check the credentials, the network and data.storage_options)"
            ) from e

    @property
    def write_dir(self) -> Path:
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="csm-adapt-upload-"))
        return self._staging

    def read_bytes(self, name: str) -> bytes:
        with self._calls(name):
            return self.fs.cat_file(self._path(name))

    def exists(self, name: str) -> bool:
        with self._calls(name):
            self.fs.invalidate_cache(self._path(name))  # other ranks and machines write here too
            return self.fs.isfile(self._path(name))

    def sizes(self) -> dict[str, int]:
        with self._calls():
            self.fs.invalidate_cache(self._path(""))
            try:
                entries = self.fs.ls(self._path(""), detail=True)
            except FileNotFoundError:
                return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e["size"]) for e in entries if e["type"] == "file"}

    def write_text(self, name: str, text: str) -> None:
        self.write_file(name, lambda path: write_text_atomic(path, text))

    def write_file(self, name: str, make: Callable[[Path], T]) -> T:
        """Have `make(path)` write the file `name` on the local disk, then upload it whole."""
        staged = self.write_dir / name
        staged.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = make(staged)
            self._upload(staged, name)
        finally:
            staged.unlink(missing_ok=True)
        return result

    def _upload(self, local: Path, name: str) -> None:
        target = self._path(name)
        with self._calls(name, write=True):
            if self.protocol in OBJECT_STORES:
                # The object appears only when the upload completes: never a partial one under its name.
                self.fs.put_file(str(local), target)
                return
            tmp = self._path(str(temp_path(Path(name))))
            try:
                self.fs.put_file(str(local), tmp)
                self.fs.mv(tmp, target)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.fs.rm_file(tmp)
                raise

    def remove(self, name: str) -> None:
        with self._calls(name), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name))

    def remove_tree(self, name: str) -> None:
        with self._calls(name), contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(name), recursive=True)
        self.fs.invalidate_cache(self._path(name))

    def remove_stale_temps(self, folder: str = "", owned: Callable[[str], bool] | None = None) -> list[str]:
        """Delete temporary objects and unfinished uploads of killed writers under `folder`; call it
        while holding the lock (then every one of them is a leftover). `owned(name)` says which
        names (relative to the store) are the writer's, so that uploads of others to the same bucket
        (say, with data.out at its root) are left alone; default: all."""
        removed = []
        prefix = self._path(folder)
        with self._calls(folder):
            self.fs.invalidate_cache(prefix)
            try:
                paths = self.fs.find(prefix)
            except FileNotFoundError:
                paths = []
            for path in paths:
                if is_temp_name(path.rsplit("/", 1)[-1]):
                    self.fs.rm_file(path)
                    removed.append(self.fs.unstrip_protocol(path))
            removed += self._abort_uploads(prefix, owned or (lambda name: True))
        return removed

    def _abort_uploads(self, prefix: str, owned: Callable[[str], bool]) -> list[str]:
        """Abort the S3 multipart uploads of `owned` names left under `prefix` by a killed writer."""
        if self.protocol not in ("s3", "s3a") or not hasattr(self.fs, "call_s3"):
            return []
        bucket, _, key_prefix = prefix.partition("/")
        key_prefix = key_prefix.rstrip("/") + "/" if key_prefix else ""
        aborted = []
        listed = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix)
        root = self._path("").partition("/")[2]
        for upload in listed.get("Uploads", []):
            key = upload["Key"]
            if not owned(key.removeprefix(root + "/" if root else "")):
                continue
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            aborted.append(f"{self.protocol}://{bucket}/{key} (unfinished upload)")
        return aborted

    @contextlib.contextmanager
    def lock(self, what: str) -> Iterator[None]:
        with DirLock(_local_lock_dir(self.url), what, label=self.url):
            self._take_lock_object(what)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    self.remove(LOCK_FILE)

    def _take_lock_object(self, what: str) -> None:
        me = {
            "host": socket.gethostname(),
            "user": os.getuid(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        for _ in range(3):
            try:
                with self._calls(LOCK_FILE, write=True):
                    self.fs.pipe_file(self._path(LOCK_FILE), json.dumps(me).encode(), mode="create")
                return
            except FileExistsError:
                pass
            try:
                holder = json.loads(self.read_bytes(LOCK_FILE))
            except FileNotFoundError:  # released meanwhile: try again
                continue
            except ValueError:
                holder = {}
            if holder.get("host") == me["host"] and (holder.get("user") == me["user"] or not _alive(holder.get("pid"))):
                # This user's OS lock on the URL is ours (the local lock is per user), or the holder's
                # process is gone: the holder has died. Take its place.
                self.remove(LOCK_FILE)
                continue
            raise LockedError(
                f"{self.url} is in use by another {what} (PID {holder.get('pid', '?')} on {holder.get('host', '?')}, "
                f"since {holder.get('since', '?')}); wait for it to finish or stop it, or use another location. "
                f"If that process is no longer running, delete {self.member(LOCK_FILE)}"
            )
        raise LockedError(f"{self.url}: could not take {self.member(LOCK_FILE)}: another {what} keeps taking it")

    def close(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


Store = LocalStore | RemoteStore


def open_store(location: Path | str | Store, options: dict[str, Any] | None = None) -> Store:
    """The store of a folder or URL (`file://` URLs are local folders); a Store is returned as is."""
    if isinstance(location, (LocalStore, RemoteStore)):
        return location
    if is_url(location):
        if str(location).startswith("file://"):
            return LocalStore(Path(str(location).removeprefix("file://")))
        return RemoteStore(str(location), options)
    return LocalStore(Path(location))


def member(location: Path | str | Store, name: str) -> Path | str:
    """The file `name` of a folder or URL, as shown in messages; opens nothing."""
    if isinstance(location, (LocalStore, RemoteStore)):
        return location.member(name)
    return f"{str(location).rstrip('/')}/{name}" if is_url(location) else Path(location) / name


def _filesystem(url: str, options: dict[str, Any]):
    """(fsspec filesystem, root path) of `url`; a missing package or a bad option is one line."""
    try:
        import fsspec
    except ImportError:
        raise StorageError(f"{url}: data at a URL needs fsspec: pip install 'csm-adapt[remote]'") from None
    protocol = url.split("://", 1)[0].split("::")[-1]
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        if protocol in REMOTE_EXTRA:
            raise StorageError(
                f"{url}: {protocol}:// needs the {REMOTE_EXTRA[protocol]} package: pip install 'csm-adapt[remote]'"
            ) from None
        raise StorageError(f"{url}: {e}") from None
    except ValueError as e:  # an unknown protocol
        raise StorageError(f"{url}: {e}") from None
    except TypeError as e:  # an option the filesystem does not take
        raise StorageError(f"{url}: data.storage_options: {e}") from None
    return fs, root.rstrip("/")


def _alive(pid: Any) -> bool:
    """Whether a process `pid` runs on this machine (one of another user's counts)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _local_lock_dir(url: str) -> Path:
    """The local folder whose OS lock stands for `url` on this machine (one per user and URL)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "csm-adapt" / "locks" / hashlib.sha256(url.encode()).hexdigest()[:16]


def read_json(store: Store, name: str) -> Any:
    """The parsed JSON file `name`, or None when it does not exist."""
    try:
        text = store.read_bytes(name).decode("utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CsmAdaptError(f"{store.member(name)}: corrupt ({e}); delete it or run prepare with --rebuild") from None


def names(store: Store, pattern: str) -> list[str]:
    """The sorted names of the files directly in the store that match the glob `pattern`."""
    return sorted(name for name in store.sizes() if fnmatch.fnmatchcase(name, pattern))
