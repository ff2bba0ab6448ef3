"""Content keys: pure functions from values to digests, no I/O.

An array's digest is xxh3-128 over a small header (key version, dtype, shape of a row), its
C-order bytes and its row count, so equal bytes give equal digests wherever the data lives and whatever it is called.
An entry's key combines the input digest with the featurizer's identity (name, canonical params,
version). Changing anything here changes every key: bump `KEY_VERSION` and say so in the docs.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

KEY_VERSION = 3  # 2: the stored dtype joined the identity; 3: the row count moved after the bytes


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: one byte string per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def array_digest(values: np.ndarray) -> str:
    """xxh3-128 hex digest of an array's dtype, shape and C-order bytes."""
    return parts_digest([values], values.dtype, values.shape)


def parts_digest(parts: Iterable[np.ndarray], dtype: np.dtype, shape: tuple[int, ...]) -> str:
    """The `array_digest` of the array that joining `parts` along the first axis would give,
    computed without joining them."""
    return column_digests(parts, dtype, shape).digest


@dataclass(frozen=True)
class ColumnDigests:
    digest: str  # of the whole column: its `array_digest`
    prefixes: dict[int, str]  # rows -> digest of the column's first rows
    segments: list[str]  # digest of each run of rows that `segments` counted, in order


def column_digests(parts: Iterable[np.ndarray], dtype: np.dtype, shape: tuple[int, ...],
                   prefixes: Iterable[int] = (), segments: Iterable[int] = ()) -> ColumnDigests:
    """`parts_digest`, and from the same single pass over the bytes: the digest of the first
    `rows` rows for each of `prefixes` (how an append is recognised), and the digest of each run of
    rows `segments` counts (one per data file of a split: how a changed file vouches for the
    columns it did not change). Every one is the `array_digest` of those rows alone."""
    # The row count goes last (a trailer), so that the state after n rows, copied and given the
    # trailer n, is the digest of those n rows: an appended column is recognised in the same pass.
    header = b"featstore-array\0" + canonical_json(
        {"v": KEY_VERSION, "dtype": np.dtype(dtype).str, "row_shape": list(shape[1:])}) + b"\0"
    prefixes, segments = set(prefixes), list(segments)
    if segments and sum(segments) != (shape[0] if shape else 0):
        raise ValueError(f"segments of {sum(segments)} rows for a column of {shape[0] if shape else 0}")
    ends = list(itertools.accumulate(segments))  # the row each segment ends before
    cuts = sorted(prefixes | set(ends))
    h, runs = xxhash.xxh3_128(header), [xxhash.xxh3_128(header) for _ in segments]
    done, out = 0, {}
    for part in parts:
        part = np.ascontiguousarray(part)
        while len(part):
            end = done + len(part)
            stop = next((n for n in cuts if done < n < end), end)  # the part's next cut, if any
            piece, part = part[: stop - done], part[stop - done :]
            data = memoryview(piece.reshape(-1).view(np.uint8))
            h.update(data)
            if runs:  # the piece lies in one segment: it stops at every segment's end
                runs[bisect.bisect_right(ends, done)].update(data)
            done += len(piece)
            if done in prefixes:
                out[done] = _finish(h.copy(), done)
    if 0 in prefixes:
        out[0] = _finish(xxhash.xxh3_128(header), 0)
    return ColumnDigests(_finish(h, shape[0] if shape else 0), out, [_finish(r, n) for r, n in zip(runs, segments)])


def _finish(h, rows: int) -> str:
    h.update(b"\0rows=" + str(rows).encode())
    return h.hexdigest()


def bytes_digest(data: bytes | memoryview) -> str:
    """xxh3-128 hex digest of raw bytes (an entry's chunk files)."""
    return xxhash.xxh3_128(data).hexdigest()


def featurizer_identity(name: str, params: dict[str, Any], version: str, dtype: str = "float32",
                        code: dict[str, str] | None = None) -> dict[str, Any]:
    """What makes two featurizer runs interchangeable: name, canonical params, version (pinned, or
    the hash of its code) and the stored dtype; for a version hashed from code, its parts too
    (`identity.code_parts`), so that a changed identity can say which helper or constant changed."""
    identity = {"name": name, "params": json.loads(canonical_json(params)), "version": str(version), "dtype": dtype}
    return identity | ({"code": dict(code)} if code is not None else {})


def entry_key(input_digest: str, identity: dict[str, Any]) -> str:
    """The key of the entry that holds `identity` applied to the input with `input_digest`."""
    payload = canonical_json({"v": KEY_VERSION, "input": input_digest, "featurizer": identity})
    return xxhash.xxh3_128(b"featstore-entry\0" + payload).hexdigest()


def check_name(kind: str, name: str) -> str:
    """`name` if it is safe to record and show (1-200 characters, no NUL, slash or backslash, not
    `.` or `..`); a ValueError naming it otherwise."""
    if not isinstance(name, str) or not 0 < len(name) <= 200 or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise ValueError(f"{kind} name {name!r:.80} is not allowed: use 1-200 characters, no '/', '\\' or NUL, "
                         "not '.' or '..'; rename the column or split")
    return name


def dataset_slug(dataset: str) -> str:
    """A file name for a dataset id (a preset name, a path, a hub id): readable and collision-free."""
    readable = re.sub(r"[^A-Za-z0-9_.\-]+", "_", dataset).strip("._")[-60:] or "dataset"
    return f"{readable}-{xxhash.xxh3_64(dataset.encode()).hexdigest()[:12]}"

