"""The one interface to the bytes of a store: small files, entry directories, atomic publish.

Everything the store writes goes through `Storage`, so an object-store backend only has to provide
these few primitives. Guarantees of `LocalStorage`:
- `write_bytes` replaces a file atomically (temporary name, fsync, rename): readers see the old or
  the new content, never a mix; a crash leaves the old one.
- `publish` moves a fully written, fsynced staging directory to its final name in one rename, and
  only if nothing is there yet (create-only): a crash before it leaves nothing visible.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path

from featstore.errors import StoreError


class Storage(ABC):
    """Paths are '/'-separated, relative to the store root."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def put(self, path: str, data: bytes | memoryview) -> None:
        """Write a new file under a `staging` path: durable and visible only once published."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names directly under `prefix` (files and directories), sorted; [] if absent."""

    @abstractmethod
    def staging(self, name: str) -> str:
        """A fresh private path to write a new entry under before `publish`."""

    @abstractmethod
    def publish(self, staging: str, final: str) -> bool:
        """Make `staging` visible as `final` atomically; False (and staging removed) if `final` exists."""

    @abstractmethod
    def delete(self, path: str) -> None: ...

    @abstractmethod
    def zarr_store(self, path: str, read_only: bool):
        """A zarr v3 store rooted at `path`."""


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, path: str) -> Path:
        return self.root / path

    def read_bytes(self, path: str) -> bytes:
        return self._path(path).read_bytes()

    def write_bytes(self, path: str, data: bytes) -> None:
        target = self._path(path)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        with _io_errors(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(target.parent)

    def put(self, path: str, data: bytes | memoryview) -> None:
        target = self._path(path)
        with _io_errors(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as f:
                f.write(data)

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def list(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(prefix)))
        except FileNotFoundError:
            return []

    def staging(self, name: str) -> str:
        return f"staging/{name}.{uuid.uuid4().hex}"

    def publish(self, staging: str, final: str) -> bool:
        src, dst = self._path(staging), self._path(final)
        with _io_errors(dst):
            for folder, _, files in os.walk(src):
                for name in files:
                    fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            dst.parent.mkdir(parents=True, exist_ok=True)
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
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    def zarr_store(self, path: str, read_only: bool):
        from zarr.storage import LocalStore

        return LocalStore(self._path(path), read_only=read_only)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _io_errors(path: Path):
    """Turn OS errors (ENOSPC, EACCES, ...) into a StoreError that names the path."""
    try:
        yield
    except StoreError:
        raise
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from e


def open_storage(location: str | Path) -> Storage:
    """The storage for a store location (a local directory for now)."""
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        raise StoreError(f"store {text!r}: only local directories are supported so far")
    return LocalStorage(text.removeprefix("file://"))
