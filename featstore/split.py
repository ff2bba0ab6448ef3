"""`Split`: one split of a dataset, read column by column straight from its Arrow or parquet files.

A split checks a column's layout without copying values, hands its zero-copy parts to the
hasher, digests each data file's rows apart (so a changed file vouches for the rest), reads its
labels as class ids, and lets go of memory-mapped pages as it goes, so memory stays bounded by a
few columns. `sources` decides which files make up which split.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featstore.columns import (
    ColumnLayout,
    column_layout,
    column_parts,
    join_layouts,
    join_parts,
    mapped_ranges,
    release_ranges,
    release_within,
)
from featstore.errors import DatasetError, brief
from featstore.keys import ColumnDigests, column_digests, parts_digest

RELEASE_BYTES = 64 << 20  # column bytes read between two releases of a split's mapped pages
# Values of a parquet column decoded at once: pyarrow's reader peaks at ~9x a batch's bytes
# (nested lists' levels and builders), 44-57 MB for batches of 0.8-1.6M float32 values here.
PARQUET_BATCH_VALUES = 1 << 20


class Split:
    """One split of a dataset: its Arrow schema, row count and column reads.

    `data` is a `pyarrow.Table` (memory-mapped from `files`), a `datasets.Dataset` (which may carry
    an indices mapping), or a list of parquet `files` read one column at a time.
    """

    def __init__(self, data, schema: pa.Schema, num_rows: int, label_names: list[str] | None,
                 files: list[str] = (), filesystem=None, stats: list[list] | None = None,
                 file_tables: list[pa.Table] | None = None, file_rows: list[int] | None = None):
        self._data = data
        self.schema = schema
        self._names = frozenset(schema.names)  # asked per catalog row: 4,000 in a 1,000-layer dataset
        self.num_rows = num_rows
        self.label_names = label_names  # class names: of a ClassLabel column, or a text one's vocabulary
        self.label_vocabulary: list[str] | None = None  # a text label column's values, sorted: set by load_source
        self.files = list(files)
        self.filesystem = filesystem  # an fsspec filesystem for remote files, None for local ones
        self._mapped: list[tuple[int, int]] | None = None
        self._checked: dict[str, tuple[ColumnLayout, list[np.ndarray]]] = {}
        self._stats = stats  # the files' stats from before they were mapped, if taken then
        self._file_tables = file_tables  # local Arrow files: each file's table, in `data`'s row order
        # Rows per local file, for the digest of each file's rows (see file_digest); not for one
        # file, whose change is the split's
        file_rows = file_rows or ([t.num_rows for t in file_tables] if file_tables else None)
        self.file_rows = file_rows if file_rows and len(file_rows) > 1 else None
        self._footers: dict = {}  # parquet: each file's metadata when the split was opened
        self._index = {f: i for i, f in enumerate(self.files)}
        self._hashed: dict[str, ColumnDigests] = {}  # parquet: columns hashed as `layout` checked them
        self._unreleased = 0  # bytes of columns read since the mapped pages were last let go of
        self._releasing = threading.Lock()

    @classmethod
    def from_dataset(cls, ds, label_column: str | None) -> Split:
        feature = ds.features.get(label_column) if label_column else None
        files = [f["filename"] for f in ds.cache_files]
        return cls(ds, ds.data.schema, len(ds), getattr(feature, "names", None), files)

    @classmethod
    def from_arrow_files(cls, files: list[str], label_column: str | None, filesystem=None) -> Split:
        """Memory-map Arrow IPC files (stream format, as `datasets` writes them, or file format);
        remote ones (on `filesystem`) are read into memory, never copied to local disk."""
        stats = None if filesystem else _stats(files)  # before mapping: what is read is never older
        tables = [_read_arrow(f, filesystem) for f in files]
        table = pa.concat_tables(tables)
        return cls(table, table.schema, table.num_rows, _label_names(table.schema, label_column), files, filesystem,
                   stats, None if filesystem else tables)

    @classmethod
    def from_parquet(cls, files: list[str], label_column: str | None, filesystem=None) -> Split:
        """Parquet files, read one column at a time (from object storage too: only that column's bytes)."""
        import pyarrow.parquet as pq

        arrow_fs = _arrow_filesystem(filesystem)
        stats = None if filesystem else _stats(files)  # before the footers are read: what is read is never older
        footers = []
        for f in files:
            try:
                footers.append(pq.ParquetFile(f, filesystem=arrow_fs).metadata)
            except (OSError, pa.ArrowException) as e:
                raise _unreadable(f, e) from e
        rows = [footer.num_rows for footer in footers]
        schema = pq.read_schema(files[0], filesystem=arrow_fs)
        split = cls(files, schema, sum(rows), _label_names(schema, label_column), files, filesystem, stats,
                    file_rows=None if filesystem else rows)
        split._footers = dict(zip(files, footers))
        return split

    def _open_parquet(self, path: str):
        """The parquet file at `path` as the split first read it, or a DatasetError if it changed
        since: what `layout` checked and hashed is what is read. A local file's stats say so (and
        its footer, kept, need not be parsed again: 1.1 ms a file for 128 columns); a remote one's
        footer is read again and compared."""
        import pyarrow.parquet as pq

        if self._stats is None:
            f = pq.ParquetFile(path, filesystem=_arrow_filesystem(self.filesystem), buffer_size=1 << 20,
                               pre_buffer=False)
            changed = not f.metadata.equals(self._footers[path])
        else:  # opened, then stat'ed: a file replaced before it was opened differs
            f = pq.ParquetFile(path, metadata=self._footers[path], buffer_size=1 << 20, pre_buffer=False)
            changed = _stats([path])[0] != self._stats[self._index[path]]
        if changed:
            raise DatasetError(f"{path} changed while featstore read it; run it again once the file is written")
        return f

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)

    def has_column(self, name: str) -> bool:
        return name in self._names

    def _table(self, name: str, files: list[str] | None = None):
        """The table to read column `name` from: of all the split's files, or (parquet) of `files`."""
        if isinstance(self._data, list):
            import pyarrow.parquet as pq

            files = files or self._data
            try:
                # no thread pool: with `datasets` imported, read_table on pyarrow's threads aborted
                # the interpreter at exit in about half of the runs ("terminate called without an
                # active exception", exit 134), pyarrow 26; the columns read here are small
                return pq.read_table(files, columns=[name], memory_map=self.filesystem is None,
                                     filesystem=_arrow_filesystem(self.filesystem), use_threads=False)
            except MemoryError:
                raise
            except (OSError, pa.ArrowException) as e:  # a data page cut short or corrupt
                raise _unreadable(f"column {name!r} of {brief(files, 3)}", e) from e
        return self._data

    def _parquet_batches(self, name: str, files: list[str] | None = None) -> Iterator[np.ndarray]:
        """Column `name` of the parquet `files` (all the split's), decoded PARQUET_BATCH_VALUES
        values at a time and checked as `column_parts` checks a column (errors name the split's
        rows): each batch's values, in row order. pyarrow streams each file through a 1 MB buffer,
        so memory holds a batch, never the column: a 512 MB column read whole by `pq.read_table`
        peaked at 2.1 GB and took 2.3-5.3 s here, in batches at 58 MB and 1.4 s."""
        if not self.has_column(name):
            column_parts(self.schema.empty_table(), name)  # its ColumnError, naming the columns there are
        first, row = None, 0
        for path in files or self._data:
            try:
                f = self._open_parquet(path)
                for batch in f.iter_batches(_batch_rows(f.metadata, name), columns=[name], use_threads=False):
                    layout, parts = column_parts(pa.Table.from_batches([batch]), name, row)
                    first = first or (layout.value_shape, layout.dtype, layout.rows, row)
                    join_layouts(name, [first, (layout.value_shape, layout.dtype, layout.rows, row)])
                    row += layout.rows
                    yield parts[0].reshape((layout.rows, *layout.value_shape))
            except MemoryError:  # pyarrow's too: no room to decode, not a bad file
                raise
            except (OSError, pa.ArrowException) as e:  # a data page cut short or corrupt
                raise _unreadable(f"column {name!r} of {path}", e) from e

    def pieces(self, name: str, files: list[str] | None = None) -> tuple[ColumnLayout, Iterator[np.ndarray]]:
        """Column `name` (of parquet `files` only, if given) as its layout and its values in row
        order, a piece at a time, each let go of before the next is read (see `streamed`): one
        pass over a column of any size (hashing it) holds a piece of it, not all of it."""
        if not isinstance(self._data, list):
            layout, parts = self.parts(name)
            return layout, self.streamed(parts)
        batches = self._parquet_batches(name, files)
        first = next(batches, None)
        if first is None:  # no rows: the layout of the empty column
            return column_layout(self._table(name, files), name), iter(())
        rows = sum(self._footers[f].num_rows for f in files or self._data)
        return ColumnLayout(rows, first.shape[1:], first.dtype), itertools.chain([first], batches)

    def blocks(self, name: str, rows: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Rows `start:` of column `name` as (first row, values) blocks of `rows` rows (the last
        may have fewer; a column of no rows is one empty block), each let go of once the next is
        asked for: a column too large to copy out whole, computed a block at a time."""
        if not isinstance(self._data, list):
            layout, parts = self.parts(name)
            for begin in range(start, max(layout.rows, 1), rows):
                yield begin, join_parts(layout, parts, begin, begin + rows)
                self.release(parts)
            return
        layout, batches = self.pieces(name)
        block, begin, filled, row = None, start, 0, 0  # the block being filled, its first row, rows in it
        for values in batches:
            values, row = values[max(0, start - row) :], row + len(values)
            while len(values):
                if block is None:
                    block = np.empty((min(rows, layout.rows - begin), *layout.value_shape), layout.dtype)
                n = min(len(block) - filled, len(values))
                block[filled : filled + n] = values[:n]
                values, filled = values[n:], filled + n
                if filled == len(block):
                    yield begin, block
                    block, begin, filled = None, begin + filled, 0
        if layout.rows == 0:
            yield 0, np.empty((0, *layout.value_shape), layout.dtype)

    def read(self, name: str) -> np.ndarray:
        return join_parts(*self.parts(name))

    def has_labels(self, column: str | None) -> bool:
        """Whether this split has the label column: a split may have none (an unlabelled test set)."""
        return column is not None and self.has_column(column)

    def labels(self, column: str) -> np.ndarray:
        """The label column as int64 class ids, one per row: a ClassLabel or integer column, floats
        that are whole numbers (never truncated), or text, each value's index in the sorted values
        of every split (`label_vocabulary`); else a DatasetError saying what to do."""
        kind = self.schema.field(column).type
        how = (f"labels must be class ids or names, one per row: encode them with ds.class_encode_column({column!r}), "
               "or name another column with --label-column")
        if is_text(kind) and self.label_vocabulary is not None:
            ids = pc.index_in(self.text(column), value_set=pa.array(self.label_vocabulary, pa.string()))
            return ids.to_numpy().astype(np.int64)
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise DatasetError(f"label column {column!r} holds {kind} values; {how}")
        values = self.read(column)
        if values.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
            if len(bad):
                raise DatasetError(f"label column {column!r} holds {values[bad[0]]} at row {bad[0]}; {how}")
        return values.astype(np.int64, copy=False)

    def text(self, column: str) -> pa.ChunkedArray:
        """A text column's values as Arrow strings; a DatasetError at its first missing value."""
        if isinstance(self._data, (list, pa.Table)):
            values = self._table(column).column(column)
        else:  # a datasets.Dataset, maybe with an indices mapping: one label per row is small
            values = pa.chunked_array([pa.array(self._data[column], pa.string())])
        if values.null_count:
            row = pc.index(pc.is_null(values), True).as_py()
            raise DatasetError(f"label column {column!r} has no value at row {row}; give every row a label, or "
                               "name another column with --label-column")
        return values.cast(pa.string())

    def layout(self, name: str) -> ColumnLayout:
        """Check the column (see columns.column_layout). For Arrow-backed splits the zero-copy parts
        are kept for the next `parts(name)`, so a build walks each column's chunks once. Parquet
        columns are decoded a batch at a time, checked and hashed in the same pass (see
        `checked_digests`), and let go of."""
        if isinstance(self._data, list):
            layout, batches = self.pieces(name)
            self._hashed[name] = column_digests(batches, layout.dtype, (layout.rows, *layout.value_shape),
                                                segments=self.file_rows or ())
            return layout
        self._checked[name] = column_parts(self._data, name)
        return self._checked[name][0]

    def checked_digests(self, name: str) -> ColumnDigests | None:
        """The digests (keys.column_digests, with a digest per data file: `file_rows`) that `layout`
        took of a parquet column while it checked it, once: a column decoded once to be checked
        need not be decoded again to be hashed. Files that changed since are refused when read."""
        return self._hashed.pop(name, None)

    def parts(self, name: str) -> tuple[ColumnLayout, list[np.ndarray]]:
        """The column's layout and its values (`column_parts`): zero-copy views of Arrow files, or
        for parquet, the column decoded into one array, a batch at a time."""
        if isinstance(self._data, list):
            layout, batches = self.pieces(name)
            out, row = np.empty((layout.rows, *layout.value_shape), layout.dtype), 0
            for values in batches:
                out[row : row + len(values)] = values
                row += len(values)
            return layout, [out]
        checked = self._checked.pop(name, None)
        return checked if checked is not None else column_parts(self._data, name)

    def file_digest(self, index: int, name: str) -> str:
        """The digest of the rows that file `index` holds of column `name` (checked like `layout`),
        for splits with `file_rows`: what a build compares with the digests it took of each file's
        rows, so that a changed file vouches for the columns it did not change."""
        if isinstance(self._data, list):
            layout, pieces = self.pieces(name, [self._data[index]])
            return parts_digest(pieces, layout.dtype, (layout.rows, *layout.value_shape))
        layout, parts = column_parts(self._file_tables[index], name)
        try:
            return parts_digest(parts, layout.dtype, (layout.rows, *layout.value_shape))
        finally:
            self.release(parts)

    def file_stats(self) -> list[list] | None:
        """(path, inode, size, mtime_ns, ctime_ns) of each file the split reads, or None when it is not
        read from files (an in-memory or indices-mapped Dataset): what the digest cache trusts.
        Arrow files are stat'ed before they are mapped: a file replaced since is hashed next time."""
        if not self.files or self.filesystem is not None or getattr(self._data, "_indices", None) is not None:
            return None
        return self._stats or _stats(self.files)

    def streamed(self, parts: list[np.ndarray]) -> Iterator[np.ndarray]:
        """`parts` cut into runs of rows of about RELEASE_BYTES, each let go of from memory (as
        `release` does) once the next is asked for: one pass over a column (hashing one too large
        to copy out whole) keeps a run of it resident, not all of it."""
        for part in parts:
            rows = max(1, RELEASE_BYTES // max(part[:1].nbytes, 1))
            for begin in range(0, len(part), rows):
                yield part[begin : begin + rows]
                release_within(part[begin : begin + rows], self._mapped_ranges())

    def _mapped_ranges(self) -> list[tuple[int, int]]:
        if self._mapped is None:
            self._mapped = [] if isinstance(self._data, list) else mapped_ranges(self.files)
        return self._mapped

    def release(self, parts: list[np.ndarray] | None = None) -> None:
        """Let go of every memory-mapped page of the split's files (they stay in the page cache;
        see columns.release_ranges): now, or, given `parts` (a column just read, from any
        thread), once RELEASE_BYTES of columns were read since the last time. One madvise per
        file every 64 MB, not one per Arrow chunk of every column."""
        if parts is not None:
            with self._releasing:
                self._unreleased += sum(p.nbytes for p in parts)
                if self._unreleased < RELEASE_BYTES:
                    return
                self._unreleased = 0
        release_ranges(self._mapped_ranges())


def is_text(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _batch_rows(metadata, name: str) -> int:
    """Rows of column `name` that hold about PARQUET_BATCH_VALUES values, by a parquet file's
    metadata: its first row group's values (as stored, before lists are rebuilt from them) per
    row. Every row has the same shape (or the read stops at the first that differs)."""
    if not metadata.num_row_groups or not metadata.row_group(0).num_rows:
        return 1 << 16
    group, schema = metadata.row_group(0), metadata.schema
    values = sum(group.column(j).num_values for j in range(metadata.num_columns)
                 if schema.column(j).path == name or schema.column(j).path.startswith(name + "."))
    return max(1, PARQUET_BATCH_VALUES * group.num_rows // values) if values else 1 << 16


def _stats(files: list[str]) -> list[list]:
    out = []
    for f in files:
        s = os.stat(f)
        # ctime too: a write that keeps the mtime (cp -p, rsync --inplace -t, os.utime) still moves it
        out.append([os.path.realpath(f), s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns])
    return out


def _arrow_filesystem(filesystem):
    """pyarrow's view of an fsspec filesystem (None: local)."""
    if filesystem is None:
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(filesystem))


def _read_arrow(path: str, filesystem=None) -> pa.Table:
    try:
        if filesystem is not None:
            with filesystem.open(path, "rb") as f:
                data = pa.py_buffer(f.read())  # in memory: IPC streams interleave every column
            return _read_ipc(pa.BufferReader(data), path)
        return _read_ipc(pa.memory_map(path), path)
    except OSError as e:  # unreadable, or cut short ("Expected to be able to read N bytes ...")
        raise _unreadable(path, e) from e


def _unreadable(what: str, e: Exception) -> DatasetError:
    return DatasetError(f"cannot read {what}: {getattr(e, 'strerror', None) or e}; the file is unreadable, "
                        "truncated or not what its name says (fix its permissions, or save the dataset again)")


def _read_ipc(source, path: str) -> pa.Table:
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid as e:
        raise DatasetError(f"{path} is not an Arrow IPC stream or file: {e}") from e


def _label_names(schema: pa.Schema, label_column: str | None) -> list[str] | None:
    """Class names of a ClassLabel column, from the features `datasets` keeps in the schema metadata."""
    try:
        info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        feature = info.get("info", {}).get("features", {}).get(label_column) or {}
    except (ValueError, AttributeError):
        return None
    return list(feature["names"]) if feature.get("_type") == "ClassLabel" and "names" in feature else None
