"""Content keys: pure functions from values to digests, no I/O.

An array's digest is xxh3-128 over a small header (key version, dtype, shape) and its C-order
bytes, so equal bytes give equal digests wherever the data lives and whatever it is called.
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

KEY_VERSION = 2  # 2: the stored dtype joined the featurizer identity


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: one byte string per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def array_digest(values: np.ndarray) -> str:
    """xxh3-128 hex digest of an array's dtype, shape and C-order bytes."""
    return parts_digest([values], values.dtype, values.shape)


def parts_digest(parts: Iterable[np.ndarray], dtype: np.dtype, shape: tuple[int, ...]) -> str:
    """The `array_digest` of the array that joining `parts` along the first axis would give,
    computed without joining them."""
    header = canonical_json({"v": KEY_VERSION, "dtype": np.dtype(dtype).str, "shape": list(shape)})
    h = xxhash.xxh3_128(b"featstore-array\0" + header + b"\0")
    for part in parts:
        h.update(memoryview(np.ascontiguousarray(part).reshape(-1).view(np.uint8)))
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

