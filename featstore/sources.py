"""Turn `--dataset` into splits of columns featstore can read.

`--dataset` is, in this order: a preset name (`sanity`, `1k`, `10k`); an existing path (a
`save_to_disk` directory of a `Dataset` or `DatasetDict`, or a directory of parquet / arrow files,
split by file name like `datasets` does); a glob of parquet / arrow files (one split, `train`);
otherwise a Hugging Face Hub id for `datasets.load_dataset` (unless it can only be a path: then
the path does not exist, and that is the error). Parquet is read one column at a time,
so memory stays bounded by one column whatever the file size.
"""

from __future__ import annotations

import difflib
import glob
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featstore import presets
from featstore.columns import (
    ColumnLayout,
    column_layout,
    column_parts,
    join_parts,
    mapped_ranges,
    release_ranges,
)
from featstore.errors import DatasetError, brief
from featstore.keys import parts_digest
from featstore.manifest import layer_matches, natural_key

log = logging.getLogger(__name__)

DEFAULT_LABEL_COLUMN = "category_label"
OBJECT_PREFIX = "fingerprint:"  # the catalog name of a datasets.Dataset object passed from Python
RELEASE_BYTES = 64 << 20  # column bytes read between two releases of a split's mapped pages
_DATA_EXTENSIONS = (".parquet", ".arrow")


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
        rows = []
        for f in files:
            try:
                rows.append(pq.ParquetFile(f, filesystem=arrow_fs).metadata.num_rows)
            except (OSError, pa.ArrowException) as e:
                raise _unreadable(f, e) from e
        schema = pq.read_schema(files[0], filesystem=arrow_fs)
        return cls(files, schema, sum(rows), _label_names(schema, label_column), files, filesystem,
                   file_rows=None if filesystem else rows)

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
                return pq.read_table(files, columns=[name], memory_map=self.filesystem is None,
                                     filesystem=_arrow_filesystem(self.filesystem))
            except (OSError, pa.ArrowException) as e:  # a data page cut short or corrupt
                raise _unreadable(f"column {name!r} of {brief(files, 3)}", e) from e
        return self._data

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
        are kept for the next `parts(name)`, so a build walks each column's chunks once."""
        if isinstance(self._data, list):  # parquet: parts would hold the decoded column
            return column_layout(self._table(name), name)
        self._checked[name] = column_parts(self._data, name)
        return self._checked[name][0]

    def parts(self, name: str) -> tuple[ColumnLayout, list[np.ndarray]]:
        checked = self._checked.pop(name, None)
        return checked if checked is not None else column_parts(self._table(name), name)

    def file_digest(self, index: int, name: str) -> str:
        """The digest of the rows that file `index` holds of column `name` (checked like `layout`),
        for splits with `file_rows`: what a build compares with the digests it took of each file's
        rows, so that a changed file vouches for the columns it did not change."""
        table = self._table(name, [self._data[index]]) if isinstance(self._data, list) else self._file_tables[index]
        layout, parts = column_parts(table, name)
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
        if self._mapped is None:
            self._mapped = [] if isinstance(self._data, list) else mapped_ranges(self.files)
        release_ranges(self._mapped)


@dataclass(frozen=True)
class Source:
    """A resolved dataset: the id the catalog knows it by, its splits, and the columns to use."""

    name: str
    splits: dict[str, Split]
    layers: list[str]
    label_column: str | None
    patterns: tuple[str, ...] = ()  # the --layers globs the layers were chosen by; () for every layer column
    empty: tuple[str, ...] = ()  # splits the dataset has without rows: left out of `splits`

    def wants(self, layer: str) -> bool:
        """Whether the --layers globs ask for `layer` (without globs, every layer)."""
        return not self.patterns or any(layer_matches(layer, p) for p in self.patterns)

    def missing(self, split: str, column: str, kind: str = "layer") -> str:
        """Why the data has no column `column` (a `kind`) in split `split` ("split gone from the
        dataset", "split empty in the dataset", "layer gone from the dataset"), or "" if it has."""
        if split not in self.splits:
            return "split empty in the dataset" if split in self.empty else "split gone from the dataset"
        return "" if self.splits[split].has_column(column) else f"{kind} gone from the dataset"

    def gone(self, rows) -> dict[tuple[str, str, str], str]:
        """The catalog `rows` (by slot) whose column this dataset no longer has, with why."""
        return {row.slot: why for row in rows if (why := self.missing(row.split, row.layer))}


def dataset_id(dataset: Any) -> str:
    """The name a dataset is catalogued under, without loading it."""
    if not isinstance(dataset, (str, os.PathLike)):
        return _object_id(dataset)
    text = str(dataset)
    if "://" in text and not text.startswith("file://"):
        return text.rstrip("/")  # a URL names itself
    text = os.path.expanduser(text.removeprefix("file://"))
    if presets.get(text) is not None:
        return presets.get(text).name
    if os.path.exists(text):
        return os.path.realpath(text)
    if glob.has_magic(text):
        return os.path.abspath(text)
    return text


def load_source(
    dataset: Any,
    layers: list[str] | tuple[str, ...] = (),
    label_column: str | None = None,
    progress: bool = False,
    default_label: str = DEFAULT_LABEL_COLUMN,
) -> Source:
    """Resolve `dataset` (see module doc) and choose its layer columns (`layers` are globs). The
    label column is `label_column`, which must exist, else `default_label` if the data has it."""
    explicit_label = label_column is not None
    label_column = label_column or default_label
    splits = _open_splits(dataset, label_column, progress)
    empty = tuple(name for name, split in splits.items() if split is None or not split.num_rows)
    named = dataset if isinstance(dataset, (str, os.PathLike)) else dataset_id(dataset)
    if empty and len(empty) < len(splits):  # nothing to compute; featurizers are never called on no rows
        log.warning("%s: split %s has no rows, so no features: left out", named, ", ".join(empty))
    splits = {name: split for name, split in splits.items() if name not in empty}
    if not splits:
        raise DatasetError(f"dataset {str(named)!r} has {'no rows' if empty else 'no splits'}")
    first = next(iter(splits.values()))
    if explicit_label and label_column not in first.column_names:
        raise DatasetError(
            f"label column {label_column!r} not in dataset {str(named)!r}; columns: {brief(first.column_names)}"
        )
    chosen = _choose_layers(first.schema, layers, label_column, str(named))  # an object's repr spans lines
    has_label = label_column in first.column_names
    if has_label and is_text(first.schema.field(label_column).type):
        _encode_text_labels(splits, label_column)
    for split_name, split in splits.items():
        names = set(split.column_names)
        missing = [c for c in chosen if c not in names]
        if missing:
            raise DatasetError(f"split {split_name!r} of {str(named)!r} lacks columns {', '.join(missing)} that "
                               f"split {next(iter(splits))!r} has; choose the layers every split has with --layers")
    return Source(dataset_id(dataset), splits, chosen, label_column if has_label else None, tuple(layers), empty)


def is_text(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _encode_text_labels(splits: dict[str, Split], column: str) -> None:
    """Text labels (`"math"`, `"code"`) become class ids: each value's index in the sorted values of
    every split together, so that the splits agree (`DatasetDict.class_encode_column` numbers each
    split's own), numbers in them by value (`class_2` before `class_10`); those values are the
    dataset's label names."""
    labelled = {name: split for name, split in splits.items() if split.has_labels(column)}
    for name, split in labelled.items():
        if not is_text(split.schema.field(column).type):
            raise DatasetError(f"label column {column!r} holds {split.schema.field(column).type} values in split "
                               f"{name!r} but text in split {next(iter(labelled))!r}; give it one type in every split")
    vocabulary = set()
    for name, split in labelled.items():
        try:
            vocabulary.update(pc.unique(split.text(column)).to_pylist())
        except DatasetError as e:
            raise DatasetError(f"split {name}: {e}") from None
    vocabulary = sorted(vocabulary, key=natural_key)  # class_2 before class_10
    for split in labelled.values():
        split.label_vocabulary = split.label_names = vocabulary


def is_layer_type(arrow_type: pa.DataType) -> bool:
    """A tensor-valued numeric column: nested lists (or datasets ArrayND) of ints or floats."""
    if isinstance(arrow_type, pa.ExtensionType):
        arrow_type = arrow_type.storage_type
    depth = 0
    while pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        arrow_type, depth = arrow_type.value_type, depth + 1
    return depth > 0 and (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type))


def _choose_layers(schema: pa.Schema, patterns, label_column: str, dataset: str) -> list[str]:
    names = [n for n in schema.names if n != label_column]
    if not patterns:
        chosen = [f.name for f in schema if f.name != label_column and is_layer_type(f.type)]
        if not chosen:
            raise DatasetError(
                f"no layer columns found in {dataset!r} (numeric tensor-valued columns); columns: "
                f"{brief(schema.names)}. Choose some with --layers GLOB"
            )
        return chosen
    chosen = []
    for pattern in patterns:
        matched = [name for name in names if layer_matches(name, pattern)]
        if not matched and label_column and layer_matches(label_column, pattern):
            raise DatasetError(f"--layers {pattern!r} matches only {label_column!r}, the label column: it is "
                               "stored as the split's labels, not as a layer (--label-column names another)")
        if not matched:
            raise DatasetError(f"--layers {pattern!r} matches no column of {dataset!r}; columns: {brief(names)}")
        if pattern not in names:  # a glob picks among the layer columns: '*' is every layer, not a text column too
            tensors = [m for m in matched if is_layer_type(schema.field(m).type)]
            if not tensors:
                layers = [n for n in names if is_layer_type(schema.field(n).type)]
                raise DatasetError(f"--layers {pattern!r} matches only {brief(matched)} of {dataset!r}, which hold no "
                                   f"numeric tensors (a column's own name picks it all the same); layer columns: "
                                   f"{brief(layers) or 'none'}")
            matched = tensors
        chosen += [m for m in matched if m not in chosen]
    return chosen


def _open_splits(dataset: Any, label_column: str, progress: bool) -> dict[str, Split | None]:
    if not isinstance(dataset, (str, os.PathLike)):
        import datasets

        if isinstance(dataset, datasets.DatasetDict):
            return {k: Split.from_dataset(v, label_column) for k, v in dataset.items()}
        if isinstance(dataset, datasets.Dataset):
            return {"train": Split.from_dataset(dataset, label_column)}
        raise DatasetError(f"cannot use a {type(dataset).__name__} as a dataset; pass a name, a path or a "
                           "datasets.Dataset / DatasetDict")
    text = str(dataset)
    if text.startswith(OBJECT_PREFIX):
        raise DatasetError(f"{text!r} names a datasets.Dataset that was passed from Python (by its fingerprint): "
                           "no file or name opens it; pass the Dataset object itself (featstore.status(ds), ...)")
    if "://" in text and not text.startswith("file://"):
        return _open_remote(text, label_column)
    text = os.path.expanduser(text.removeprefix("file://"))
    if presets.get(text) is not None:
        return _open_saved(presets.ensure(text, progress=progress), label_column)
    if os.path.isdir(text):
        if (Path(text) / "dataset_dict.json").exists() or (Path(text) / "state.json").exists():
            return _open_saved(Path(text), label_column)
        return _open_files(_files_by_split(text), label_column)
    if os.path.isfile(text):
        return _open_files({"train": [text]}, label_column)
    if glob.has_magic(text):
        files = sorted(f for f in glob.glob(text, recursive=True) if f.endswith(_DATA_EXTENSIONS))
        if not files:
            raise DatasetError(f"--dataset {text!r} matches no .parquet or .arrow file")
        return _open_files({"train": files}, label_column)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or text.endswith(_DATA_EXTENSIONS):
        # not a Hub id ('name' or 'org/name', no leading dot): a path that is not there
        raise DatasetError(f"--dataset {text!r}: no such file or directory (nor a preset: "
                           f"{', '.join(presets.PRESETS)})")
    if "/" not in text and (same := [p for p in (*presets.PRESETS, *presets.ALIASES) if p.lower() == text.lower()]):
        raise DatasetError(f"--dataset {text!r} is no preset: preset names are lower case, did you mean {same[0]!r}?")
    return _open_hub(text, label_column)


def _near_preset(name: str) -> str:
    """' (did you mean the preset X?)' for a name close to a preset's, else ''."""
    close = difflib.get_close_matches(name.lower(), [*presets.PRESETS, *presets.ALIASES], n=1, cutoff=0.7)
    return f" (did you mean the preset {close[0]!r}?)" if close else ""


def _open_saved(path: Path, label_column: str) -> dict[str, Split | None]:
    """A `save_to_disk` directory, opened with pyarrow from the files its state.json lists.

    `datasets.load_from_disk` would give the same tables, but importing and running it cost ~0.7 s
    (measured), most of a no-op rebuild of `1k`; save_to_disk never writes an indices mapping.
    """
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        folders = {name: path / name for name in splits}
    else:
        folders = {"train": path}
    out = {}
    for name, folder in folders.items():
        try:
            state = json.loads((folder / "state.json").read_text())
            files = [str(folder / f["filename"]) for f in state["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{folder} is not a readable save_to_disk directory ({e!r}); re-save it") from e
        out[name] = Split.from_arrow_files(files, label_column) if files else None  # an empty split has no file
    return out


def _files_by_split(directory: str) -> dict[str, list[str]]:
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(directory)
        found = DataFilesDict.from_patterns(patterns, base_path=directory, allowed_extensions=list(_DATA_EXTENSIONS))
    except Exception as e:  # datasets raises EmptyDatasetError / FileNotFoundError here
        raise DatasetError(f"no .parquet or .arrow files found in {directory}: {e}") from e
    out = {str(split): sorted(str(f) for f in files) for split, files in found.items() if files}  # not NamedSplit
    if not out:
        raise DatasetError(f"no .parquet or .arrow files found in {directory}")
    return out


def _open_files(files_by_split: dict[str, list[str]], label_column: str) -> dict[str, Split]:
    out = {}
    for split, files in files_by_split.items():
        kinds = {os.path.splitext(f)[1] for f in files}
        if kinds == {".parquet"}:
            out[split] = Split.from_parquet(files, label_column)
        elif kinds == {".arrow"}:
            out[split] = Split.from_arrow_files(files, label_column)
        else:
            raise DatasetError(f"split {split!r} mixes file kinds {sorted(kinds)}; use one of .parquet or .arrow")
    return out


def _open_remote(url: str, label_column: str) -> dict[str, Split]:
    """A save_to_disk directory, a parquet file or a directory of parquet files at an fsspec URL
    (s3://, gs://, memory://, ...). Credentials come from the backend's usual configuration."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        root = root.rstrip("/")
        if fs.exists(f"{root}/dataset_dict.json") or fs.exists(f"{root}/state.json"):
            if fs.exists(f"{root}/dataset_dict.json"):
                folders = {n: f"{root}/{n}" for n in json.loads(fs.cat_file(f"{root}/dataset_dict.json"))["splits"]}
            else:
                folders = {"train": root}
            out = {}
            for name, folder in folders.items():
                state = json.loads(fs.cat_file(f"{folder}/state.json"))
                files = [f"{folder}/{f['filename']}" for f in state["_data_files"]]
                out[name] = Split.from_arrow_files(files, label_column, fs)
            return out
        files = [root] if fs.isfile(root) else sorted(f for f in fs.find(root) if f.endswith(".parquet"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"cannot read --dataset {url!r}: {e!r}") from e
    if not files or not all(f.endswith(".parquet") for f in files):
        raise DatasetError(f"--dataset {url!r}: expected a save_to_disk directory or .parquet files there")
    return {"train": Split.from_parquet(files, label_column, fs)}


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


def _open_hub(name: str, label_column: str) -> dict[str, Split]:
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as e:  # offline, unknown repo, gated repo: all end here with the reason
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(
            f"--dataset {name!r} is not a preset ({', '.join(presets.PRESETS)}), nor an existing path, "
            f"and loading it from the Hugging Face Hub failed: {reason}. Check the name{_near_preset(name)}, the network, "
            "or HF_HUB_OFFLINE; or pass a local path"
        ) from e
    if isinstance(loaded, datasets.Dataset):
        return {"train": Split.from_dataset(loaded, label_column)}
    return {k: Split.from_dataset(v, label_column) for k, v in loaded.items()}


def _label_names(schema: pa.Schema, label_column: str | None) -> list[str] | None:
    """Class names of a ClassLabel column, from the features `datasets` keeps in the schema metadata."""
    try:
        info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        feature = info.get("info", {}).get("features", {}).get(label_column) or {}
    except (ValueError, AttributeError):
        return None
    return list(feature["names"]) if feature.get("_type") == "ClassLabel" and "names" in feature else None


def _object_id(obj: Any) -> str:
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        return OBJECT_PREFIX + "+".join(f"{k}={v._fingerprint}" for k, v in sorted(obj.items()))
    if isinstance(obj, datasets.Dataset):
        return f"{OBJECT_PREFIX}{obj._fingerprint}"
    raise DatasetError(f"cannot use a {type(obj).__name__} as a dataset; pass a name, a path or a datasets.Dataset")
