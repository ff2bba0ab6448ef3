"""The one interface to the bytes of a store: small files, entry directories, atomic publish.

Everything the store writes goes through `Storage`, so an object-store backend only has to provide
these few primitives (`fsspec_storage.FsspecStorage` does, for any fsspec URL). Guarantees of
`LocalStorage`:
- `write_bytes` replaces a file atomically (temporary name, fsync, rename): readers see the old or
  the new content, never a mix; a crash leaves the old one.
- `publish` moves a fully written staging directory (its files and the directory itself fsynced)
  to its final name in one rename, and only if nothing is there yet (create-only), then fsyncs
  the parent: a crash before the rename leaves nothing visible, a power cut after it no entry
  that lacks a file.
- `delete` of a directory first renames it out of sight (under `trash/`), so it vanishes at once.
- `lock` is an advisory lock (flock) that the kernel releases when its process dies, however it
  dies: a killed build never leaves the store locked.

`FEATSTORE_CRASH_AT=N` (tests only) SIGKILLs the process at its Nth storage operation, between
the steps of each one too, so crash tests can stop a real build at every point that matters.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import socket
import stat
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from featstore.errors import ReadOnlyStore, StoreError


class Storage(ABC):
    """Paths are '/'-separated, relative to the store root."""

    @abstractmethod
    def create(self) -> None:
        """Make the store's root where the backend has one."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def write_new(self, path: str, data: bytes) -> bool:
        """Like `write_bytes`, but only if `path` does not exist yet: False (nothing written) if it does."""

    @abstractmethod
    def put(self, path: str, data: bytes | memoryview) -> None:
        """Write a new file under a `staging` path (durably): visible only once published."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names directly under `prefix` (files and directories), sorted; [] if absent."""

    @abstractmethod
    def staging(self, name: str) -> str:
        """A fresh private path to write a new entry under before `publish`."""

    @abstractmethod
    def publish(self, staging: str, final: str, metadata: tuple[str, bytes]) -> bool:
        """Write `metadata` (name, bytes) last and make `staging` visible as `final` atomically;
        False (and staging removed where it is apart from `final`) if `final` exists."""

    @abstractmethod
    def delete(self, path: str) -> None: ...

    def read_into(self, path: str, buffer: memoryview) -> bool:
        """Fill `buffer` with the file's bytes; False if the file's size differs from the buffer's."""
        data = self.read_bytes(path)
        if len(data) != len(buffer):
            return False
        buffer[:] = data
        return True

    @abstractmethod
    def size(self, path: str) -> int:
        """Bytes under `path` (a file, or everything in a directory)."""

    @abstractmethod
    def mtime(self, path: str) -> float:
        """Last modification (or `touch`) of `path`, seconds since the epoch."""

    @abstractmethod
    def touch(self, path: str) -> None:
        """Mark `path` as just used (gc removes least recently used entries first)."""

    @abstractmethod
    @contextmanager
    def lock(self, name: str, shared: bool, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock `name`, shared or exclusive; wait up to `timeout` seconds (None: forever)
        and raise StoreError after that."""


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, path: str) -> Path:
        return self.root / path

    def _name(self, path: str) -> str:
        """`_path` as a string, for the per-entry calls of a load (pathlib's joins cost 40% of them)."""
        return f"{self.root}/{path}"

    def create(self) -> None:
        with io_errors(self.root):
            make_root(self.root)

    def read_bytes(self, path: str) -> bytes:
        with open(self._name(path), "rb") as f:
            return f.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        self._via_temporary(path, data, os.replace)

    def write_new(self, path: str, data: bytes) -> bool:
        return self._via_temporary(path, data, os.link)  # link: atomic and create-only

    def _via_temporary(self, path: str, data: bytes, move) -> bool:
        """Write `data` to a temporary file beside `path`, fsync it, `move` it into place (replace,
        or link: False if `path` exists), fsync the directory."""
        target = self._path(path)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        crash_point()
        with io_errors(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                crash_point()
                try:
                    move(tmp, target)
                except FileExistsError:
                    return False
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(target.parent)
            return True

    def put(self, path: str, data: bytes | memoryview) -> None:
        target = self._path(path)
        crash_point()
        with io_errors(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # before publish renames it into sight

    def exists(self, path: str) -> bool:
        return os.path.exists(self._name(path))

    def list(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(prefix)))
        except FileNotFoundError:
            return []

    def staging(self, name: str) -> str:
        return f"staging/{name}.{uuid.uuid4().hex}"

    def publish(self, staging: str, final: str, metadata: tuple[str, bytes]) -> bool:
        self.put(f"{staging}/{metadata[0]}", metadata[1])
        src, dst = self._path(staging), self._path(final)
        crash_point()
        with io_errors(dst):  # the files are fsynced already (`put`); their names, in the directory, next
            _fsync_dir(src)  # else a power cut could leave the published entry without some of its files
            dst.parent.mkdir(parents=True, exist_ok=True)
            crash_point()
            try:
                os.rename(src, dst)  # a directory rename fails if dst exists and is not empty
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                shutil.rmtree(src, ignore_errors=True)
                return False
            _fsync_dir(dst.parent)
            return True

    def delete(self, path: str) -> None:
        target = self._path(path)
        crash_point()
        with io_errors(target):
            if target.is_dir():
                trash = self.root / "trash" / f"{target.name}.{uuid.uuid4().hex}"
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.rename(target, trash)  # gone from sight at once; the removal below may take a while
                crash_point()
                shutil.rmtree(trash)
            else:
                target.unlink(missing_ok=True)

    def read_into(self, path: str, buffer: memoryview) -> bool:
        with open(self._name(path), "rb") as f:
            if os.fstat(f.fileno()).st_size != len(buffer):
                return False
            return f.readinto(buffer) == len(buffer)

    def size(self, path: str) -> int:
        target = self._path(path)
        if not target.is_dir():
            return target.stat().st_size
        return sum(os.stat(os.path.join(folder, f)).st_size for folder, _, files in os.walk(target) for f in files)

    def mtime(self, path: str) -> float:
        return self._path(path).stat().st_mtime

    def touch(self, path: str) -> None:
        try:
            os.utime(self._name(path))
        except OSError:  # a read-only store is still readable: usage is a hint for gc, not a must
            pass

    @contextmanager
    def lock(self, name: str, shared: bool, timeout: float | None = None) -> Iterator[None]:
        path = self._path(f"locks/{name}")
        try:
            with io_errors(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except ReadOnlyStore as e:  # a read-only mount: flock needs only the file its builds left, opened to read
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                raise e from None
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        what = "a gc" if shared else "builds"
                        raise StoreError(f"{self.root} is locked by {what} still running ({path}); "
                                         "retry when it finishes") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock


def make_root(root: Path) -> None:
    """Create a store root with the user's umask, but never writable by everyone."""
    root.mkdir(parents=True, exist_ok=True)
    mode = root.stat().st_mode
    if mode & stat.S_IWOTH:
        root.chmod(stat.S_IMODE(mode) & ~stat.S_IWOTH)


_crash = {"at": int(os.environ.get("FEATSTORE_CRASH_AT", "0") or 0), "count": 0}


def crash_point() -> None:
    """SIGKILL this process at the FEATSTORE_CRASH_AT-th call (tests only; off when unset)."""
    if _crash["at"]:
        _crash["count"] += 1
        if _crash["count"] == _crash["at"]:
            os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def io_errors(path: Path):
    """Turn OS errors (ENOSPC, EACCES, ...) into a StoreError that names the path."""
    try:
        yield
    except StoreError:
        raise
    except OSError as e:
        if e.errno in _READ_ONLY:
            raise ReadOnlyStore(f"cannot write {path}: {e.strerror or e}; use a store you can write to (--store, "
                                "FEATSTORE_STORE)") from e
        hint = "; free some space and run it again: what the store holds is intact, and a build computes " \
            "only what it lacks" \
            if e.errno == errno.ENOSPC else ""
        raise StoreError(f"cannot write {path}: {e.strerror or e}{hint}") from e


_READ_ONLY = (errno.EROFS, errno.EACCES)  # not EPERM: also a filesystem without hard links (write_new)


def holder_alive(record: dict) -> bool:
    """Whether the process that wrote `record` ({host, pid}: a lease or a lock marker) may live:
    another host's always, this host's while its pid does."""
    if record.get("host") != socket.gethostname():
        return bool(record)
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return "pid" in record
    return True


def open_storage(location: str | Path) -> Storage:
    """The storage for a store location: a local directory (or file:// URL), else any fsspec URL."""
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        from featstore.fsspec_storage import FsspecStorage  # fsspec and its backends, only when used

        return FsspecStorage(text)
    return LocalStorage(text.removeprefix("file://"))
