"""Build features: plan (check every column and featurizer), then execute layer by layer.

`plan` touches no values and writes nothing, so a bad column or featurizer fails before the store
changes. `execute` reads each (split, layer) column once, hashes it, computes only the
featurizers whose entry key is not in the store yet, publishes each entry atomically, and writes
the dataset's catalog last. Memory is bounded by one column plus its features.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from featstore import device as devices
from featstore.columns import ColumnLayout
from featstore.errors import FeatstoreError
from featstore.featurizers import BoundFeaturizer
from featstore.keys import array_digest, entry_key, featurizer_identity
from featstore.manifest import Catalog, CatalogRow, EntryInfo, SplitInfo
from featstore.sources import Source
from featstore.store import Store

# Labels are stored as an entry like any other, keyed by this pseudo-featurizer.
LABELS_IDENTITY = featurizer_identity("labels", {}, "1")
PHASES = ("read", "hash", "compute", "write")


@dataclass(frozen=True)
class BuildPlan:
    source: Source
    featurizers: tuple[BoundFeaturizer, ...]
    layouts: dict[tuple[str, str], ColumnLayout]  # (split, layer) -> what the column holds

    @property
    def units(self) -> list[tuple[str, str]]:
        """(split, layer) pairs in build order: layer by layer, each layer's splits together."""
        return [(s, layer) for layer in self.source.layers for s in self.source.splits]


@dataclass(frozen=True)
class EntryResult:
    split: str
    layer: str
    featurizer: str
    key: str
    status: str  # "computed" | "reused"


@dataclass
class BuildReport:
    dataset: str
    store: str
    device: str
    entries: list[EntryResult] = field(default_factory=list)
    bytes_written: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*PHASES, "total"), 0.0))

    @property
    def computed(self) -> int:
        return sum(e.status == "computed" for e in self.entries)

    @property
    def reused(self) -> int:
        return sum(e.status == "reused" for e in self.entries)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "store": self.store,
            "device": self.device,
            "computed": self.computed,
            "reused": self.reused,
            "bytes_written": self.bytes_written,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "entries": [asdict(e) for e in self.entries],
        }


def plan(source: Source, featurizers: tuple[BoundFeaturizer, ...]) -> BuildPlan:
    """Check every chosen column of every split (shape, dtype, nulls, raggedness; no values are
    copied) and every featurizer's output shape. Raises before anything is written."""
    if not featurizers:
        raise FeatstoreError("no featurizers requested")
    layouts = {}
    for split_name, split in source.splits.items():
        for layer in source.layers:
            layout = split.layout(layer)
            for f in featurizers:
                try:
                    f.output_shape(layout.value_shape)
                except FeatstoreError as e:
                    raise type(e)(f"featurizer {f.spec} cannot use column {layer!r} (split {split_name}): {e}") from e
            layouts[(split_name, layer)] = layout
        if source.label_column:
            split.layout(source.label_column)
    return BuildPlan(source, tuple(featurizers), layouts)


def execute(build_plan: BuildPlan, store: Store, device: str = "auto", progress: bool = False) -> BuildReport:
    """Compute and publish what the store lacks, then update the dataset's catalog."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    source = build_plan.source
    report = BuildReport(source.name, store.location, device)  # resolved when something is computed
    previous = store.read_catalog(source.name)
    known = {r.key: r.created for r in previous.rows} if previous else {}
    rows: list[CatalogRow] = []
    units = build_plan.units
    bar = tqdm(units, desc=f"build {source.name}", unit="column", disable=not progress or None, leave=False)
    for split_name, layer in bar:
        rows += _build_column(build_plan, store, report, known, split_name, layer)
        counts = Counter(e.status for e in report.entries)
        bar.set_postfix(computed=counts["computed"], reused=counts["reused"], refresh=False)
    bar.close()
    splits = {name: SplitInfo(split.num_rows, _labels(store, report, source, name)) for name, split in source.splits.items()}
    first = next(iter(source.splits.values()))
    catalog = Catalog(
        dataset=source.name,
        splits=splits,
        rows=tuple(rows),
        label_column=source.label_column,
        label_names=tuple(first.label_names) if first.label_names else None,
        updated=_now(),
    )
    store.write_catalog(previous.merged(catalog) if previous else catalog)
    report.seconds["total"] = time.perf_counter() - started
    return report


def _build_column(build_plan, store, report, known, split_name, layer) -> list[CatalogRow]:
    split = build_plan.source.splits[split_name]
    with _timed(report, "read"):
        values = split.read(layer)
    with _timed(report, "hash"):
        digest = array_digest(values)
    rows, tensor = [], None
    for f in build_plan.featurizers:
        key = entry_key(digest, f.identity)
        shape = (len(values), *f.output_shape(values.shape[1:]))
        status = "reused"
        if not store.has_entry(key):
            if tensor is None:
                report.device = devices.resolve(report.device)
                tensor = devices.to_tensor(values, report.device)
            with _timed(report, "compute"):
                out = devices.to_numpy(f(tensor))
            if out.shape != shape or out.dtype != np.float32:
                raise FeatstoreError(
                    f"featurizer {f.spec} returned {out.dtype}{list(out.shape)} for column {layer!r}; "
                    f"it declares float32{list(shape)}"
                )
            created = _now()
            info = _entry_info(key, digest, f.identity, out, created, report.device)
            with _timed(report, "write"):
                if store.write_entry(info, out):
                    report.bytes_written += out.nbytes
            known[key] = created
            status = "computed"
        elif key not in known:
            known[key] = store.entry_info(key).created
        report.entries.append(EntryResult(split_name, layer, f.spec, key, status))
        rows.append(CatalogRow(split_name, layer, f.spec, key, shape, "float32", 4 * int(np.prod(shape)), known[key]))
    return rows


def _labels(store: Store, report: BuildReport, source: Source, split_name: str) -> str | None:
    if not source.label_column:
        return None
    values = source.splits[split_name].read(source.label_column).astype(np.int64, copy=False)
    digest = array_digest(values)
    key = entry_key(digest, LABELS_IDENTITY)
    if not store.has_entry(key):
        store.write_entry(_entry_info(key, digest, LABELS_IDENTITY, values, _now(), "cpu"), values)
    return key


def _entry_info(key, digest, identity, out: np.ndarray, created: str, device: str) -> EntryInfo:
    return EntryInfo(
        key=key,
        input_digest=digest,
        featurizer=identity,
        shape=tuple(out.shape),
        dtype=out.dtype.name,
        output_digest=array_digest(out),
        created=created,
        device=device,
        versions=_versions(),
    )


@functools.cache
def _versions() -> dict[str, str]:
    import datasets
    import zarr

    import featstore

    return {"featstore": featstore.__version__, "torch": devices.torch_version(), "zarr": zarr.__version__,
            "datasets": datasets.__version__, "numpy": np.__version__}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def _timed(report: BuildReport, phase: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        report.seconds[phase] += time.perf_counter() - start
