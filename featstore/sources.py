"""Turn `--dataset` into splits of columns featstore can read.

`--dataset` is, in this order: a preset name (`sanity`, `1k`, `10k`); an existing path (a
`save_to_disk` directory of a `Dataset` or `DatasetDict`, or a directory of parquet / arrow files,
split by file name like `datasets` does); a glob of parquet / arrow files (one split, `train`);
otherwise a Hugging Face Hub id for `datasets.load_dataset` (unless it can only be a path: then
the path does not exist, and that is the error). Parquet is read one column at a time,
so memory stays bounded by one column whatever the file size.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from featstore import presets
from featstore.errors import DatasetError, brief, did_you_mean
from featstore.manifest import layer_matches, meant_layer, natural_key
from featstore.split import Split, is_text

log = logging.getLogger(__name__)

DEFAULT_LABEL_COLUMN = "category_label"
OBJECT_PREFIX = "fingerprint:"  # the catalog name of a datasets.Dataset object passed from Python
_DATA_EXTENSIONS = (".parquet", ".arrow")


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
            raise DatasetError(f"--layers {pattern!r} matches no column of {dataset!r}{_near_layers(pattern, names)}; "
                               f"columns: {brief(names)}")
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


def _near_layers(pattern: str, names: list[str]) -> str:
    """For a --layers glob that matches nothing: how to give several (`layer_001,layer_002`), or the
    column a name without wildcards is close to (`Layer_001`); else ''."""
    parts = [p.strip() for p in pattern.split(",")]
    if len(parts) > 1 and all(any(layer_matches(name, p) for name in names) for p in parts):
        return f" (several globs are separate options: --layers {' --layers '.join(parts)}; in Python, a list)"
    return "" if glob.has_magic(pattern) else meant_layer(pattern, names)


def _near_preset(name: str) -> str:
    """' (did you mean the preset X?)' for a name close to a preset's, else ''."""
    return did_you_mean(name, [*presets.PRESETS, *presets.ALIASES], cutoff=0.7, what="the preset ")


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


def _object_id(obj: Any) -> str:
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        return OBJECT_PREFIX + "+".join(f"{k}={v._fingerprint}" for k, v in sorted(obj.items()))
    if isinstance(obj, datasets.Dataset):
        return f"{OBJECT_PREFIX}{obj._fingerprint}"
    raise DatasetError(f"cannot use a {type(obj).__name__} as a dataset; pass a name, a path or a datasets.Dataset")
