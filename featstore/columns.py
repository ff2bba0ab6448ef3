"""Read one whole column of a `datasets.Dataset` as a numpy array, straight from the Arrow buffers.

`read_column` never goes through Python lists: it checks the list offsets and validity bitmaps
level by level (cheap: no values are touched), then views the leaf values buffer as numpy.
One chunk and no indices mapping: a zero-copy, read-only view. Several chunks, or an indices
mapping (after `select` / `shuffle` / `filter`): exactly one copy into a fresh array.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from featstore.errors import ColumnError, brief

__all__ = [
    "ColumnLayout",
    "column_layout",
    "column_parts",
    "join_layouts",
    "join_parts",
    "mapped_ranges",
    "read_column",
    "release_ranges",
    "release_within",
]

_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
_libc = ctypes.CDLL(None) if _MADV_DONTNEED is not None and os.path.exists("/proc/self/maps") else None


@dataclass(frozen=True)
class ColumnLayout:
    """What a column holds: rows, the shape of one value, and the stored dtype."""

    rows: int
    value_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return self.rows * int(np.prod(self.value_shape, dtype=np.int64)) * self.dtype.itemsize


def read_column(ds, name: str) -> np.ndarray:
    """Return column `name` of `ds` (a `datasets.Dataset` or a `pyarrow.Table`) as an array of
    shape `(n_rows, *value_shape)` with the stored dtype.

    Raises `ColumnError` naming the column and the first bad row for ragged rows, nulls, and
    non-numeric values. The result is read-only when it is a zero-copy view of the dataset.
    """
    return join_parts(*column_parts(ds, name))


def column_layout(ds, name: str) -> ColumnLayout:
    """Check column `name` like `read_column` does, without copying its values."""
    return column_parts(ds, name)[0]


def column_parts(ds, name: str, first_row: int = 0) -> tuple[ColumnLayout, list[np.ndarray]]:
    """The column's layout and its values as zero-copy arrays, one per Arrow chunk, in row order.
    Hashing the parts in order equals hashing the joined column, with no copy. Errors name rows
    from `first_row` on (`ds` being a piece of a column that starts there)."""
    chunks = [(chunk, first_row + row) for chunk, row in _chunks(ds, name)]
    parts = [_chunk_values(chunk, name, first_row) for chunk, first_row in chunks]
    layout = join_layouts(name, [(p.shape[1:], p.dtype, len(p), r) for p, (_, r) in zip(parts, chunks)])
    return layout, [p for p in parts if len(p)] or parts[:1]


def join_parts(layout: ColumnLayout, parts: list[np.ndarray], start: int = 0, stop: int | None = None) -> np.ndarray:
    """One array from `column_parts` (its rows `start:stop`): a view of the part if they lie in
    one, else one copy."""
    stop = layout.rows if stop is None else min(stop, layout.rows)
    bounds = np.cumsum([0, *(len(p) for p in parts)])  # the column's row where each part starts
    inside = [(part, lo) for part, lo, hi in zip(parts, bounds, bounds[1:]) if lo < stop and hi > start]
    if len(inside) <= 1:
        part, lo = inside[0] if inside else (parts[0], 0)
        return part.reshape((-1, *layout.value_shape))[start - lo : stop - lo]
    out = np.empty((stop - start, *layout.value_shape), dtype=layout.dtype)
    for part, lo in inside:
        keep = part[max(0, start - lo) : stop - lo]
        at = max(0, lo - start)
        out[at : at + len(keep)] = keep
    return out


def mapped_ranges(files: list[str]) -> list[tuple[int, int]]:
    """Address ranges where this process maps `files`. While a table memory-mapped from them is
    alive, they stay mapped, so `release_ranges` can trust the ranges for that long."""
    files = {os.path.realpath(f) for f in files}
    if not files or _libc is None:
        return []
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() in files:
                lo, hi = fields[0].split("-")
                ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def release_ranges(ranges: list[tuple[int, int]]) -> None:
    """Drop every page of `ranges` (from `mapped_ranges`: read-only file mappings, never
    anonymous memory, which MADV_DONTNEED would zero) from this process's resident set; they stay
    in the page cache, and a later read faults them back in. Without it, reading every layer of
    the 2 GB `1k` preset leaves 2.4 GB resident, and so does checking the layouts of every column
    of the 21 GB `10k` preset (measured)."""
    for lo, hi in ranges:
        _libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED)


def release_within(values: np.ndarray, ranges: list[tuple[int, int]]) -> None:
    """`release_ranges` for the whole pages of `values` (a view of a mapped file) that lie in
    `ranges`: those of one piece of a column, not every page of the split. Memory outside
    `ranges` (anonymous: a copy) is never touched."""
    page = mmap.PAGESIZE
    lo = values.__array_interface__["data"][0]
    lo, hi = -(-lo // page) * page, (lo + values.nbytes) // page * page
    release_ranges([(max(lo, a), min(hi, b)) for a, b in ranges if max(lo, a) < min(hi, b)])


def _chunks(ds, name: str) -> list[tuple[pa.Array, int]]:
    """The column's Arrow chunks (extension types unwrapped), indices mapping applied, with the
    dataset row each chunk starts at."""
    table = ds if isinstance(ds, pa.Table) else ds.data
    try:
        column = table.column(name)
    except KeyError:
        raise ColumnError(f"column {name!r} not found; columns: {brief(table.schema.names)}") from None
    if isinstance(column.type, pa.ExtensionType):  # datasets' ArrayND: read its list storage
        column = column.cast(column.type.storage_type)
    storage_type = column.type
    chunks = column.chunks or [pa.array([], type=storage_type)]
    indices = getattr(ds, "_indices", None)
    if indices is not None:
        # One copy of the selected rows only: Arrow gathers list values natively.
        chunks = column.take(indices.column(0)).chunks or [pa.array([], type=storage_type)]
    chunks = [c for c in chunks if len(c)] or chunks[:1]
    starts = np.cumsum([0] + [len(c) for c in chunks[:-1]]).tolist()
    return list(zip(chunks, starts))


def _unnest(arr: pa.Array, name: str, first_row: int) -> tuple[pa.Array, tuple[int, ...]]:
    """Walk nested list levels, checking uniform lengths and nulls; return leaf values and shape."""
    shape: list[int] = []
    per_row = 1  # elements of the current level that make up one dataset row
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        _check_nulls(arr, name, first_row, per_row)
        if pa.types.is_fixed_size_list(arr.type):
            size = arr.type.list_size
            values = arr.values.slice(arr.offset * size, len(arr) * size)
        else:
            offsets = _offsets(arr)
            lengths = offsets[1:] - offsets[:-1]  # np.diff, without its Python overhead (2560 chunks in 1k)
            size = int(lengths[0]) if len(lengths) else 0
            if (lengths != size).any():
                i = int(np.flatnonzero(lengths != size)[0])
                raise ColumnError(
                    f"column {name!r} is ragged: row {first_row + i // per_row} has a list of length "
                    f"{lengths[i]} where earlier rows have {size}; featstore needs every row to have the "
                    "same shape (pad or filter the rows, or exclude the column with --layers)"
                )
            start, stop = int(offsets[0]), int(offsets[-1])
            values = arr.values
            if start or stop != len(values):  # a slice: the values it spans
                values = values.slice(start, stop - start)
        shape.append(size)
        per_row *= size
        arr = values
    _check_nulls(arr, name, first_row, per_row)
    return arr, tuple(shape)


def _offsets(arr: pa.Array) -> np.ndarray:
    """A list array's offsets, zero-copy: `Array.to_numpy` would import pandas (0.3 s of a fresh
    process's first column check)."""
    offsets = arr.offsets
    width = np.dtype(np.int64 if pa.types.is_large_list(arr.type) else np.int32)
    return np.frombuffer(offsets.buffers()[1], width, len(offsets), offsets.offset * width.itemsize)


def _check_nulls(arr: pa.Array, name: str, first_row: int, per_row: int) -> None:
    if arr.null_count:
        i = int(np.flatnonzero(~arr.is_valid().to_numpy(zero_copy_only=False))[0])
        raise ColumnError(
            f"column {name!r} has a null at row {first_row + i // max(per_row, 1)}; "
            "featstore needs complete numeric tensors (fill or filter the nulls first)"
        )


def _leaf_dtype(values: pa.Array, name: str, first_row: int) -> np.dtype:
    t = values.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise ColumnError(
            f"column {name!r} holds {t} values (first at row {first_row}); featstore reads numeric "
            "tensors only (float16/32/64 or integers): exclude it with --layers or convert it"
        )
    return np.dtype(_NUMPY_NAMES.get(str(t), str(t)))  # t.to_pandas_dtype() would import pandas (0.45 s)


_NUMPY_NAMES = {"halffloat": "float16", "float": "float32", "double": "float64"}  # Arrow's names that differ


def _chunk_values(arr: pa.Array, name: str, first_row: int) -> np.ndarray:
    values, shape = _unnest(arr, name, first_row)
    dtype = _leaf_dtype(values, name, first_row)
    # the values buffer itself (zero-copy, read-only); Array.to_numpy would import pandas (0.2 s)
    flat = (np.frombuffer(values.buffers()[1], dtype, len(values), values.offset * dtype.itemsize) if len(values)
            else np.empty(0, dtype))
    flat.flags.writeable = False  # the dataset's memory: never written through
    return flat.reshape((len(arr), *shape))


def join_layouts(name: str, parts: list[tuple[tuple[int, ...], np.dtype, int, int]]) -> ColumnLayout:
    """The layout of a column made of `parts` ((value shape, dtype, rows, first row) each), or a
    ColumnError at the first row whose values differ from the first part's."""
    shape, dtype = parts[0][0], parts[0][1]
    for part_shape, part_dtype, rows, first_row in parts[1:]:
        if rows and (part_shape != shape or part_dtype != dtype):
            raise ColumnError(
                f"column {name!r} is ragged: row {first_row} has values of shape {part_shape} "
                f"({part_dtype}) where earlier rows have {shape} ({dtype})"
            )
    return ColumnLayout(rows=sum(p[2] for p in parts), value_shape=tuple(shape), dtype=np.dtype(dtype))
