"""`FsspecStorage`: a store on any fsspec filesystem (`s3://`, `gs://`, `memory://`, ...), the
`Storage` primitives for object stores, where no rename exists (see the class). Imported only when
a store location is such a URL (`storage.open_storage`).
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from featstore.errors import StoreError
from featstore.storage import Storage, crash_point, holder_alive, io_errors


class FsspecStorage(Storage):
    """A store on any fsspec filesystem (`s3://`, `gs://`, `memory://`, ...), for object stores
    where no rename exists. An entry's files are written straight under its final path (its key:
    the same bytes whoever writes them) and made visible by one create-only write of its
    metadata (`publish`: a conditional PUT, If-None-Match, on S3); readers and `has_entry` look for
    that metadata only, so a crashed writer leaves only unreferenced chunk objects, which gc
    removes. Credentials come from the backend's usual environment and config files.

    Locks are marker objects (see `lock`). Limit: `touch` does nothing (least recently used =
    least recently written)."""

    def __init__(self, url: str, **options):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"FsspecStorage({self.url!r})"

    def _path(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def create(self) -> None:
        with io_errors(self.url):
            self.fs.makedirs(self.root, exist_ok=True)

    def read_bytes(self, path: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(path))
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StoreError(f"cannot read {self.url}/{path}: {e}") from e

    def write_bytes(self, path: str, data: bytes) -> None:
        crash_point()
        with io_errors(f"{self.url}/{path}"):
            self.fs.pipe_file(self._path(path), data)  # one PUT: readers see all of it or none

    def write_new(self, path: str, data: bytes) -> bool:
        with io_errors(f"{self.url}/{path}"):
            if "mode" not in inspect.signature(self.fs.pipe_file).parameters:
                # a filesystem without create-only writes (fsspec before 2024.12 took mode= and
                # overwrote): best effort
                if self.fs.exists(self._path(path)):
                    return False
                self.fs.pipe_file(self._path(path), data)
                return True
            try:
                self.fs.pipe_file(self._path(path), data, mode="create")
            except FileExistsError:
                return False
            return True

    def put(self, path: str, data: bytes | memoryview) -> None:
        crash_point()
        with io_errors(f"{self.url}/{path}"):
            self.fs.pipe_file(self._path(path), bytes(data))

    def exists(self, path: str) -> bool:
        return self.fs.exists(self._path(path))

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        self.fs.invalidate_cache(path)  # other processes change the store: never answer from a cached listing
        try:
            found = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        finally:
            self.fs.invalidate_cache(path)  # nor let `exists` answer from this one later (lock markers, gc)
        base = self._path(prefix).rstrip("/") + "/"
        return sorted({p.rstrip("/").removeprefix(base).split("/")[0] for p in found if p.rstrip("/") != base[:-1]})

    def staging(self, name: str) -> str:
        return f"entries/{name[:2]}/{name}"  # content-addressed: written in place, visible once published

    def publish(self, staging: str, final: str, metadata: tuple[str, bytes]) -> bool:
        if staging != final:
            raise StoreError(f"{self.url}: entries are written in place; staging {staging} != {final}")
        crash_point()
        return self.write_new(f"{final}/{metadata[0]}", metadata[1])

    def delete(self, path: str) -> None:
        crash_point()
        target = self._path(path)
        with io_errors(f"{self.url}/{path}"):
            if self.fs.isdir(target):
                if self.fs.exists(f"{target}/zarr.json"):
                    self.fs.rm_file(f"{target}/zarr.json")  # the entry vanishes at once
                self.fs.rm(target, recursive=True)
            elif self.fs.exists(target):
                self.fs.rm_file(target)

    def size(self, path: str) -> int:
        return int(self.fs.du(self._path(path)))

    def mtime(self, path: str) -> float:
        target = self._path(path)
        if self.fs.isdir(target) and self.fs.exists(f"{target}/zarr.json"):
            target = f"{target}/zarr.json"
        info = self.fs.info(target)
        stamp = info.get("LastModified") or info.get("mtime") or info.get("created") or 0
        return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)

    def touch(self, path: str) -> None:
        pass

    @contextmanager
    def lock(self, name: str, shared: bool, timeout: float | None = None) -> Iterator[None]:
        """Marker objects under `locks/<name>/`. Shared holders (builds) each write their own
        marker, then back off while the `exclusive` one (gc's) exists; the exclusive holder creates
        its marker create-only, then waits until no live shared marker remains. Each side writes
        before it looks, so on a consistent store (S3 is) they never both go ahead. A marker of a
        dead process on this host is stale and removed; another host's counts until its holder
        removes it (the error names it: delete it by hand if that holder crashed)."""
        mine = f"locks/{name}/" + (f"shared-{uuid.uuid4().hex}" if shared else "exclusive")
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "created": time.time()}).encode()
        deadline = None if timeout is None else time.monotonic() + timeout
        held = False
        try:
            while True:
                if shared:
                    self.write_bytes(mine, record)
                    held = True
                    blockers = self._live_markers(name, "exclusive")
                    if not blockers:
                        break
                    self.delete(mine)
                    held = False
                else:
                    held = held or self.write_new(mine, record)
                    blockers = self._live_markers(name, "shared-" if held else "exclusive")
                    if held and not blockers:
                        break
                if deadline is not None and time.monotonic() > deadline:
                    what = "a gc" if shared else "builds"
                    raise StoreError(f"{self.url} is locked by {what} still running ({', '.join(blockers)}); "
                                     "retry when it finishes")
                time.sleep(0.1)
            yield
        finally:
            if held:
                self.delete(mine)

    def _live_markers(self, name: str, prefix: str) -> list[str]:
        """The lock markers of `name` starting with `prefix` whose holders may live; stale ones
        (a dead process on this host) are removed."""
        live = []
        for marker in self.list(f"locks/{name}"):
            if not marker.startswith(prefix):
                continue
            path = f"locks/{name}/{marker}"
            try:
                record = json.loads(self.read_bytes(path))
            except FileNotFoundError:
                continue  # released meanwhile
            except ValueError:
                record = {}
            if holder_alive(record):
                live.append(f"{self.url}/{path}")
            else:
                self.delete(path)
        return live
