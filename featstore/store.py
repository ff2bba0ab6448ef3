"""Entries as content-addressed Zarr v3 arrays, plus one catalog per dataset.

Layout under the store root (all access through `storage.Storage`):

    featstore.json                 format marker: {"format": "featstore", "schema_version": 2}
    entries/<key[:2]>/<key>/       one Zarr v3 array per entry, chunked along rows, no compression,
                                   its provenance and chunk digests in its attributes (`featstore`)
    staging/<key>.<random>/        entries being written; never read, removed by gc
    trash/                         entries being deleted (renamed here first, then removed)
    locks/                         flock files: builds share `store`, gc holds it alone
    leases/<host>-<pid>-<id>.json  entry keys an open reader uses; gc keeps them while the pid lives
    catalog/<dataset-slug>.json    (dataset, split, layer, featurizer) -> entry key
    digests/<dataset-slug>.json    column digests per split, trusted while its files' stats match
                                   (or, for a changed file, while its rows of a column hash the same)

An entry is written under `staging/`, then published with one atomic create-only rename, so a
visible entry is always complete; the catalog is written after its entries. Entries are
immutable: the same key always holds the same bytes. This module knows nothing of featurizers
or datasets.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from featstore.errors import StoreError
from featstore.keys import bytes_digest, dataset_slug
from featstore.manifest import SCHEMA_VERSION, Catalog, CatalogRow, EntryInfo
from featstore.storage import Storage, open_storage

# Float features barely compress: on the 1k preset zstd-1 saves 6% of raw and 11% of svd bytes at
# ~2.5x the write and ~3x the read time of no codec; 8 MB chunks read as fast as one big chunk
# while keeping row slices cheap. benchmarks/bench_codec.py and results/codec.txt have the numbers.
CHUNK_BYTES = 8 << 20
READERS = 4  # chunks of one entry read at a time
_MARKER = "featstore.json"
_OWN = {_MARKER, "entries", "staging", "trash", "catalog", "digests", "locks", "leases"}  # what a store holds


def chunk_rows(rows: int, row_bytes: int, target: int | None = None) -> int:
    """Rows per chunk for chunks of about `target` bytes, balanced so that the last chunk is nearly
    full: zarr stores an edge chunk padded to full size, so 800 rows in 512-row chunks cost 1024."""
    n_chunks = max(1, -(-rows * max(row_bytes, 1) // (target or CHUNK_BYTES)))
    return max(1, -(-rows // n_chunks))


def chunk_name(i: int, ndim: int) -> str:
    """The file of row chunk `i` of an `ndim`-dimensional entry: `c.<i>.0...` (zarr's default key
    encoding with "." as separator: one flat directory, no folders to create per entry)."""
    return ".".join(["c", str(i)] + ["0"] * (ndim - 1))


def _chunk_rows(meta: dict) -> int:
    """Rows per chunk of an entry, from its `zarr.json`."""
    return meta["chunk_grid"]["configuration"]["chunk_shape"][0]


def stored_dtype(dtype: str) -> np.dtype:
    """The numpy dtype an entry of features in `dtype` is stored as (bfloat16 as its raw uint16)."""
    return np.dtype(np.uint16 if dtype == "bfloat16" else dtype)


def zarr_metadata(shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int, attributes: dict) -> dict:
    """The `zarr.json` of an uncompressed little-endian Zarr v3 array of `shape` and `dtype`,
    chunked along rows, with fill value 0: what `zarr.create_array` writes for it."""
    return {
        "shape": list(shape),
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_rows, *(max(1, d) for d in shape[1:])]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
        "fill_value": 0.0 if dtype.kind == "f" else 0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": attributes,
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


class Store:
    def __init__(self, storage: Storage, location: str):
        self.storage = storage
        self.location = location

    @classmethod
    def open(cls, location: str | Path, create: bool = False) -> Store:
        """Open the store at `location`; with `create`, make it if it does not exist yet."""
        storage = open_storage(location)
        if not storage.exists(_MARKER) and create:
            foreign = [name for name in storage.list("") if name not in _OWN and not name.startswith(".")]
            if foreign:
                raise StoreError(f"{location} exists and is not a featstore; choose an empty or new directory")
            storage.create()
            # create-only: of builders racing to create the store, one writes the marker, all use it
            storage.write_new(_MARKER, json.dumps({"format": "featstore", "schema_version": SCHEMA_VERSION}).encode())
        if not storage.exists(_MARKER):
            raise StoreError(f"no featstore at {location}; build one first (featstore build --store {location} ...)")
        try:
            marker = json.loads(storage.read_bytes(_MARKER))
        except ValueError as e:
            raise StoreError(f"{location}/{_MARKER} is damaged ({e})") from e
        version = marker.get("schema_version")
        if marker.get("format") != "featstore" or not isinstance(version, int):
            raise StoreError(f"{location}/{_MARKER} is not a featstore marker ({marker})")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{location} was written by a newer featstore (schema {version}; this one "
                             f"reads {SCHEMA_VERSION}); upgrade featstore")
        if version < SCHEMA_VERSION:
            raise StoreError(f"{location} was written by an older featstore (schema {version}; this one "
                             f"reads {SCHEMA_VERSION}); build into a new store, or delete this one and rebuild")
        return cls(storage, str(location))

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    # entries ---------------------------------------------------------------------------------

    @staticmethod
    def entry_path(key: str) -> str:
        return f"entries/{key[:2]}/{key}"

    def has_entry(self, key: str) -> bool:
        return self.storage.exists(f"{self.entry_path(key)}/zarr.json")

    def write_entry(self, info: EntryInfo, values: np.ndarray) -> bool:
        """Publish `values` as entry `info.key`, a Zarr v3 array chunked along rows, with the
        xxh3 digest of every chunk file recorded in its attributes (`featstore verify` checks
        them). False if the entry already existed (a concurrent writer published the same key
        first; its bytes are the same by construction).

        The files are written here rather than through zarr's async machinery: a small entry costs
        ~1 ms instead of ~3.5 ms of Python that competes with the compute thread for the GIL. Their
        format is pinned against zarr's own by tests/test_store.py, and zarr reads them."""
        values = values.astype(values.dtype.newbyteorder("<"), copy=False)
        rows = chunk_rows(len(values), values[:1].nbytes)
        staging = self.storage.staging(info.key)
        try:
            chunks = {}
            for i, start in enumerate(range(0, len(values), rows)):
                block = np.ascontiguousarray(values[start : start + rows])
                data = memoryview(block).cast("B")
                if len(block) < rows:  # zarr stores an edge chunk padded to full size with the fill value, 0
                    data = data.tobytes() + bytes((rows - len(block)) * block[:1].nbytes)
                name = chunk_name(i, values.ndim)
                self.storage.put(f"{staging}/{name}", data)
                chunks[name] = bytes_digest(data)
            info = replace(info, chunks=chunks)
            meta = zarr_metadata(values.shape, values.dtype, rows, {"featstore": info.to_json()})
            # one line: json's C encoder (`indent` takes the pure-Python one, 4x slower)
            return self.storage.publish(staging, self.entry_path(info.key), ("zarr.json", json.dumps(meta).encode()))
        except BaseException:
            if staging != self.entry_path(info.key):  # in place (object stores), orphans are gc's to remove
                _quietly(self.storage.delete, staging)  # a failed write (ENOSPC, ...) leaves nothing behind
            raise

    def entry_keys(self, published: bool = True) -> list[str]:
        """Every published entry's key; with `published=False`, the keys of entry folders without
        metadata instead: what a writer that crashed before publishing left on an object store."""
        keys = [key for shard in self.storage.list("entries") for key in self.storage.list(f"entries/{shard}")
                if not key.startswith(".")]
        return [key for key in keys if self.has_entry(key) == published]

    def delete_entry(self, key: str) -> None:
        """Remove an entry; it disappears at once (one rename), then its files go."""
        self.storage.delete(self.entry_path(key))

    def check_entry(self, key: str) -> tuple[str | None, int]:
        """(what is wrong with entry `key`, or None; bytes read): its metadata must name it, and
        every chunk file its shape implies must exist with the size and digest recorded at publish
        (zarr would read a missing chunk as zeros, so presence is checked explicitly)."""
        path = self.entry_path(key)
        try:
            meta, info = self._metadata(key)
        except CorruptEntry as e:
            return e.problem, 0
        rows = _chunk_rows(meta)
        expected = {chunk_name(i, len(info.shape)) for i in range(-(-info.shape[0] // rows) if info.shape and rows else 0)}
        if set(info.chunks) != expected:
            return f"records chunks {sorted(info.chunks)}, its shape implies {sorted(expected)}", 0
        read = 0
        for name, digest in sorted(info.chunks.items()):
            try:
                data = self.storage.read_bytes(f"{path}/{name}")
            except OSError:
                return f"chunk {name} is missing", read
            read += len(data)
            if bytes_digest(data) != digest:
                return f"chunk {name} does not match its digest (damaged or truncated: {len(data)} bytes)", read
        return None, read

    def _metadata(self, key: str) -> tuple[dict, EntryInfo]:
        """The entry's `zarr.json` and provenance; StoreError if it is missing, unreadable, another
        entry's, or not the uncompressed row-chunked format `write_entry` writes."""
        path = f"{self.entry_path(key)}/zarr.json"
        try:
            raw = self.storage.read_bytes(path)
        except FileNotFoundError:
            raise StoreError(f"entry {key} is missing from {self.location}; rebuild to recreate it") from None
        try:
            meta = json.loads(raw)
            info = EntryInfo.from_json(meta["attributes"]["featstore"], key)
            rows = _chunk_rows(meta)
            expected = zarr_metadata(info.shape, np.dtype(meta["data_type"]), rows, meta["attributes"])
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise CorruptEntry(self, key, f"has damaged metadata ({e!r})") from e
        if info.key != key:
            raise CorruptEntry(self, key, f"holds the metadata of entry {info.key}")
        if meta != expected:
            raise CorruptEntry(self, key, "is not in the format featstore writes")
        return meta, info

    def entry_info(self, key: str) -> EntryInfo:
        return self._metadata(key)[1]

    def entry_chunks(self, key: str) -> tuple[int, dict[str, str]]:
        """(rows per chunk, {chunk file: digest}) of entry `key`, from its metadata."""
        meta, info = self._metadata(key)
        return _chunk_rows(meta), info.chunks

    def read_entry(self, key: str, rows: slice | None = None, out: np.ndarray | None = None,
                   known: CatalogRow | None = None) -> np.ndarray:
        """The entry's values, or the rows `rows` of them (reading only the chunks they fall in),
        every chunk read checked against the digest recorded when it was written: a flipped bit,
        a truncated or a missing chunk raises StoreError, never returns wrong numbers. Chunks
        are read straight into the result (`out`, if given: e.g. pinned memory), several at a time.
        A catalog row `known` that records the entry's chunks spares reading its metadata (the
        chunk digests are checked all the same)."""
        if known is not None and known.key == key and known.chunk_rows and known.chunks:
            try:
                return self._read_chunks(key, rows, out, stored_dtype(known.dtype), known.shape, known.chunk_rows,
                                         known.chunks)
            except CorruptEntry:
                pass  # the row's record is a hint (the entry may have been rebuilt since): its metadata decides
        meta, info = self._metadata(key)
        return self._read_chunks(key, rows, out, np.dtype(meta["data_type"]), info.shape, _chunk_rows(meta), info.chunks)

    def _read_chunks(self, key: str, rows: slice | None, out: np.ndarray | None, dtype: np.dtype,
                     full: tuple[int, ...], per: int, digests: dict[str, str]) -> np.ndarray:
        dtype = dtype.newbyteorder("<")
        start, stop, step = (rows or slice(None)).indices(full[0])
        if step != 1:
            raise ValueError(f"rows must be a contiguous slice, not {rows}")
        stop = max(start, stop)
        shape = (stop - start, *full[1:])
        if out is None:
            out = np.empty(shape, dtype)
        elif out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {dtype} array of shape {shape}, not {out.dtype}{out.shape}")
        path = self.entry_path(key)

        def read(i: int) -> None:
            name = chunk_name(i, len(shape))
            lo, hi = max(start, i * per), min(stop, (i + 1) * per)
            whole = lo == i * per and hi == (i + 1) * per  # the chunk lies inside the result
            target = out[lo - start : hi - start] if whole else np.empty((per, *shape[1:]), dtype)
            try:
                complete = self.storage.read_into(f"{path}/{name}", memoryview(target).cast("B"))
            except FileNotFoundError:
                complete = False
            if not complete or bytes_digest(memoryview(target).cast("B")) != digests.get(name):
                raise CorruptEntry(self, key, f"is corrupt: chunk {name} is missing, short or does not match its digest")
            if not whole:
                out[lo - start : hi - start] = target[lo - i * per : hi - i * per]

        chunks = range(start // per, -(-stop // per)) if stop > start else range(0)
        if len(chunks) > 1:
            list(_reader_pool().map(read, chunks))
        else:
            for i in chunks:
                read(i)
        self.storage.touch(path)
        return out

    # catalogs --------------------------------------------------------------------------------

    @staticmethod
    def catalog_path(dataset: str) -> str:
        return f"catalog/{dataset_slug(dataset)}.json"

    def read_catalog(self, dataset: str) -> Catalog | None:
        path = self.catalog_path(dataset)
        if not self.storage.exists(path):
            return None
        return self.catalog_at(path)

    def catalog_at(self, path: str) -> Catalog:
        """The catalog in file `path` (one of `catalog_paths`); StoreError, naming it, if damaged."""
        return Catalog.from_bytes(self.storage.read_bytes(path), f"{self.location}/{path}")

    def catalog_paths(self) -> list[str]:
        return [f"catalog/{name}" for name in self.storage.list("catalog")
                if name.endswith(".json") and not name.startswith(".")]

    def write_catalog(self, catalog: Catalog) -> None:
        self.storage.write_bytes(self.catalog_path(catalog.dataset), catalog.to_bytes())

    def read_digests(self, dataset: str) -> dict:
        """{split: {"files": [[path, inode, size, mtime_ns, ctime_ns], ...], "layers": {layer: digest},
        "layouts": {column: [rows, shape, dtype]}, "segments": {layer: [digest of each file's rows]}}},
        or {} when absent or unreadable (a cache: the build then hashes again)."""
        path = f"digests/{dataset_slug(dataset)}.json"
        try:
            data = json.loads(self.storage.read_bytes(path)) if self.storage.exists(path) else {}
        except (OSError, ValueError):
            return {}
        return data.get("splits", {}) if data.get("schema_version") == SCHEMA_VERSION else {}

    def write_digests(self, dataset: str, splits: dict) -> None:
        data = {"schema_version": SCHEMA_VERSION, "dataset": dataset, "splits": splits}
        self.storage.write_bytes(f"digests/{dataset_slug(dataset)}.json", json.dumps(data, indent=1).encode())

    def delete_catalog(self, dataset: str) -> None:
        """Forget `dataset`: its catalog, then its digest cache (its entries stay, for gc)."""
        self.storage.delete(self.catalog_path(dataset))
        self.storage.delete(f"digests/{dataset_slug(dataset)}.json")

    # leases: what open readers hold, so that gc leaves it alone ---------------------------------

    def lease(self, keys: set[str]) -> str:
        """Record that this process uses `keys`; returns the lease's path, for `release`."""
        path = f"leases/{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        record = {"host": socket.gethostname(), "pid": os.getpid(), "created": time.time(), "keys": sorted(keys)}
        self.storage.write_bytes(path, json.dumps(record).encode())
        return path

    def release(self, path: str) -> None:
        _quietly(self.storage.delete, path)

    def leases(self) -> dict[str, dict]:
        """{path: lease} of every lease file; an unreadable one counts as holding nothing."""
        out = {}
        for name in self.storage.list("leases"):
            if name.endswith(".json") and not name.startswith("."):
                try:
                    out[f"leases/{name}"] = json.loads(self.storage.read_bytes(f"leases/{name}"))
                except (OSError, ValueError):
                    out[f"leases/{name}"] = {}
        return out

    def catalogs(self) -> list[Catalog]:
        return sorted(map(self.catalog_at, self.catalog_paths()), key=lambda c: c.dataset)


@functools.cache
def _reader_pool() -> ThreadPoolExecutor:
    """Threads that read the chunks of an entry, kept for the process (starting threads per read
    cost more than reading a small entry)."""
    return ThreadPoolExecutor(READERS, "featstore-chunks")


class CorruptEntry(StoreError):
    """An entry whose files are not what was published: `problem` says how."""

    def __init__(self, store: Store, key: str, problem: str):
        super().__init__(f"entry {key} in {store.location} {problem}; run `featstore verify --repair` and rebuild")
        self.problem = problem


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:
        pass
