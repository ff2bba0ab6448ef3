"""What an entry and a catalog record, as frozen dataclasses serialised to JSON.

Both carry `schema_version`; reading a version this code does not know is a clear error, never a
guess. JSON only: nothing read back from a store is ever unpickled.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from featstore.errors import StoreError

SCHEMA_VERSION = 2  # 2: entries record a digest per chunk file


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers in names by value: `layers.2.mlp` before `layers.10.mlp`
    (plain sorting puts 10 first, and a plot over layers out of depth order). The name itself
    breaks ties (`layer_01`, `layer_1`), so the order never depends on the input's."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))), name


def meant_layer(name: str, layers: Iterable[str]) -> str:
    """' (did you mean X?)' where `name` is one of `layers` but for case, separators or zero padding
    (`Layer_001`, `layer-1` and `layer_0001` for `layer_001`), else ''. Names that differ in a
    number (`layer_009`) are other layers, not typos."""
    def loose(n: str) -> tuple:
        return tuple(int(part) if i % 2 else re.sub(r"[^a-z]", "", part.lower())
                     for i, part in enumerate(re.split(r"(\d+)", n)))

    meant = [layer for layer in layers if loose(layer) == loose(name)]
    return f" (did you mean {meant[0]!r}?)" if len(meant) == 1 else ""


def layer_matches(layer: str, pattern: str) -> bool:
    """Whether a `--layers` pattern selects `layer`: its own name (a column may be called `w[0]` or
    `a*b`), or a glob (`*`, `?`, `[...]`) that matches it, case-sensitively on every platform."""
    return layer == pattern or fnmatch.fnmatchcase(layer, pattern)


def now() -> str:
    """The time an entry is created or a catalog updated: UTC, to the second, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_version(data: dict[str, Any], what: str) -> None:
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{what} has schema_version {version!r}; this featstore reads version {SCHEMA_VERSION}. "
            "Upgrade featstore (or rebuild the store with this version)"
        )


@dataclass(frozen=True)
class EntryInfo:
    """Provenance of one entry, kept in its Zarr attributes under `featstore`."""

    key: str
    input_digest: str
    featurizer: dict[str, Any]  # name, params, version: keys.featurizer_identity
    shape: tuple[int, ...]
    dtype: str
    output_digest: str
    created: str
    device: str
    versions: dict[str, str] = field(default_factory=dict)
    chunks: dict[str, str] = field(default_factory=dict)  # chunk file -> xxh3-128 of its bytes
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values, for writing (a shallow copy: `asdict` took as long as the
        rest of a small entry's metadata)."""
        return vars(self) | {"shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> EntryInfo:
        _check_version(data, f"entry {where}")
        return cls(**(data | {"shape": tuple(data["shape"])}))


@dataclass(frozen=True)
class CatalogRow:
    """(split, layer, featurizer) of a dataset -> the entry holding its features."""

    split: str
    layer: str
    featurizer: str  # canonical spec, e.g. `svd:k=32` (parameters at their defaults left out)
    key: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    created: str
    input_digest: str = ""  # what the entry was computed from ...
    identity: dict[str, Any] = field(default_factory=dict)  # ... and by (keys.featurizer_identity)
    chunk_rows: int = 0  # the entry's rows per chunk and chunk digests, as its metadata records them:
    chunks: dict[str, str] = field(default_factory=dict)  # loads need not read its zarr.json (0 / {}: unknown)

    @property
    def slot(self) -> tuple[str, str, str]:
        return (self.split, self.layer, self.featurizer)


@dataclass(frozen=True)
class SplitInfo:
    rows: int
    labels: str | None = None  # key of the entry holding the split's labels (int64)


@dataclass(frozen=True)
class Catalog:
    """Everything the store knows about one dataset."""

    dataset: str
    splits: dict[str, SplitInfo]
    rows: tuple[CatalogRow, ...]
    label_column: str | None = None
    label_names: tuple[str, ...] | None = None
    updated: str = ""
    # featurizer name -> the module that registered it, for the featurizers of yours: what a later
    # status or verify must --import (named in its error, never imported from here: a store is data)
    modules: dict[str, str] = field(default_factory=dict)

    def merged(self, newer: Catalog) -> Catalog:
        """This catalog with `newer`'s splits and rows replacing the ones they name."""
        rows = {r.slot: r for r in self.rows} | {r.slot: r for r in newer.rows}
        return replace(
            newer,
            splits=self.splits | newer.splits,
            rows=tuple(sorted(rows.values(), key=lambda r: r.slot)),
            label_names=newer.label_names or self.label_names,
            modules=self.modules | newer.modules,
        )

    def to_bytes(self) -> bytes:
        """JSON with one entry per line, each written by json's C encoder: `indent` takes its
        pure-Python encoder, and with `asdict` that took 0.12 s for the 1k preset's 514 entries,
        a fifth of a rebuild after one layer changed."""
        head = json.dumps({
            "schema_version": SCHEMA_VERSION,
            "dataset": self.dataset,
            "updated": self.updated,
            "label_column": self.label_column,
            "label_names": list(self.label_names) if self.label_names else None,
            "splits": {k: asdict(v) for k, v in sorted(self.splits.items())},
            "modules": dict(sorted(self.modules.items())),  # readers before it ignore it
        })
        entries = ",\n".join(json.dumps(vars(r)) for r in self.rows)  # fields as they are: tuples become lists
        return f'{head[:-1]}, "entries": [\n{entries}\n]}}\n'.encode()  # head without its closing brace

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> Catalog:
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise StoreError(f"catalog {where} is not valid JSON ({e}); restore it or delete it and rebuild") from e
        _check_version(data, f"catalog {where}")
        return cls(
            dataset=data["dataset"],
            splits={k: SplitInfo(**v) for k, v in data["splits"].items()},
            rows=tuple(CatalogRow(**(r | {"shape": tuple(r["shape"])})) for r in data["entries"]),
            label_column=data.get("label_column"),
            label_names=tuple(data["label_names"]) if data.get("label_names") else None,
            updated=data.get("updated", ""),
            modules=dict(data.get("modules") or {}),
        )


def entry_uses(catalogs: Iterable[Catalog]) -> dict[str, str]:
    """Every catalogued entry's key -> the feature it serves, for messages: `1k train/layer_017
    svd`, `1k test labels`, with `and 1 more` where datasets share it."""
    uses: dict[str, list[str]] = {}
    for c in catalogs:
        for r in c.rows:
            uses.setdefault(r.key, []).append(f"{c.dataset} {r.split}/{r.layer} {r.featurizer}")
        for split, info in sorted(c.splits.items()):
            if info.labels:
                uses.setdefault(info.labels, []).append(f"{c.dataset} {split} labels")
    return {key: used[0] + (f" and {len(used) - 1} more" if len(used) > 1 else "") for key, used in uses.items()}
