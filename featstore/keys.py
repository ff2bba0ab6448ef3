"""Content keys: pure functions from values to digests, no I/O.

An array's digest is xxh3-128 over a small header (key version, dtype, shape of a row), its
C-order bytes and its row count, so equal bytes give equal digests wherever the data lives and whatever it is called.
An entry's key combines the input digest with the featurizer's identity (name, canonical params,
version). Changing anything here changes every key: bump `KEY_VERSION` and say so in the docs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
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


def parts_digest(parts: Iterable[np.ndarray], dtype: np.dtype, shape: tuple[int, ...],
                 prefixes: Iterable[int] = ()) -> str:
    """The `array_digest` of the array that joining `parts` along the first axis would give,
    computed without joining them. With `prefixes`, returns (digest, {rows: digest of the first
    `rows` rows}) from the same single pass over the bytes."""
    digest, prefix = _digests(parts, dtype, shape, set(prefixes))
    return (digest, prefix) if prefixes else digest


def _digests(parts, dtype, shape, prefixes: set[int]) -> tuple[str, dict[int, str]]:
    # The row count goes last (a trailer), so that the state after n rows, copied and given the
    # trailer n, is the digest of those n rows: an appended column is recognised in the same pass.
    header = canonical_json({"v": KEY_VERSION, "dtype": np.dtype(dtype).str, "row_shape": list(shape[1:])})
    h = xxhash.xxh3_128(b"featstore-array\0" + header + b"\0")
    done, out = 0, {}
    for part in parts:
        part = np.ascontiguousarray(part)
        for cut in sorted(n for n in prefixes if done < n <= done + len(part)):
            h.update(memoryview(part[: cut - done].reshape(-1).view(np.uint8)))
            out[cut] = _finish(h.copy(), cut)
            part, done = part[cut - done :], cut
        h.update(memoryview(part.reshape(-1).view(np.uint8)))
        done += len(part)
    if 0 in prefixes:
        out[0] = _digests([], dtype, (0, *shape[1:]), set())[0]
    return _finish(h, shape[0] if shape else 0), out


def _finish(h, rows: int) -> str:
    h.update(b"\0rows=" + str(rows).encode())
    return h.hexdigest()


def bytes_digest(data: bytes | memoryview) -> str:
    """xxh3-128 hex digest of raw bytes (an entry's chunk files)."""
    return xxhash.xxh3_128(data).hexdigest()


def featurizer_identity(name: str, params: dict[str, Any], version: str, dtype: str = "float32") -> dict[str, Any]:
    """What makes two featurizer runs interchangeable: name, canonical params, version (pinned, or
    the hash of its code) and the stored dtype."""
    return {"name": name, "params": json.loads(canonical_json(params)), "version": str(version), "dtype": dtype}


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

