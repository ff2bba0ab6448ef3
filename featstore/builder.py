"""Build features: plan what is missing, then execute layer by layer.

`plan` checks every chosen column (shape, dtype, nulls, raggedness) and every featurizer's output
shape, and hashes each column straight from its Arrow buffers: it knows every entry key and which
ones the store lacks before anything is written, so a bad column fails with the store untouched.
`execute` reads (copies) only the columns with missing entries, computes only those entries,
publishes each atomically, and writes the dataset's catalog last. Memory is bounded by one column
plus its features: memory-mapped pages are released after each column.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from featstore import device as devices
from featstore.columns import ColumnLayout, join_parts
from featstore.errors import FeatstoreError, FeaturizerError
from featstore.featurizers import BoundFeaturizer
from featstore.keys import array_digest, entry_key, featurizer_identity, parts_digest
from featstore.manifest import Catalog, CatalogRow, EntryInfo, SplitInfo
from featstore.sources import Source
from featstore.store import Store

log = logging.getLogger(__name__)

# Labels are stored as an entry like any other, keyed by this pseudo-featurizer.
LABELS_IDENTITY = featurizer_identity("labels", {}, "1")
PHASES = ("hash", "read", "compute", "write")


@dataclass(frozen=True)
class Unit:
    """One (split, layer) column: what it holds, its digest, and the entry key per featurizer."""

    split: str
    layer: str
    layout: ColumnLayout
    digest: str
    keys: dict[str, str]  # featurizer spec -> entry key


@dataclass(frozen=True)
class BuildPlan:
    source: Source
    featurizers: tuple[BoundFeaturizer, ...]
    units: tuple[Unit, ...]  # layer by layer, each layer's splits together
    missing: frozenset[str]  # entry keys the store lacks
    hash_seconds: float

    @property
    def to_compute(self) -> int:
        return sum(key in self.missing for u in self.units for key in u.keys.values())


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


def plan(source: Source, featurizers: tuple[BoundFeaturizer, ...], store: Store, progress: bool = False) -> BuildPlan:
    """Check and hash every chosen column of every split; find the entries the store lacks.
    Raises (naming the column, row or featurizer) before anything is written."""
    from tqdm.auto import tqdm

    if not featurizers:
        raise FeatstoreError("no featurizers requested")
    started = time.perf_counter()
    pairs = [(split_name, layer) for layer in source.layers for split_name in source.splits]
    # Hashing is bound by page faults and xxhash, both outside the GIL: threads give ~1.6x on 2 cores.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        hashed = pool.map(lambda pair: _plan_unit(source, featurizers, *pair), pairs)
        units = list(tqdm(hashed, total=len(pairs), desc=f"hash {source.name}", unit="column", leave=False,
                          disable=True if not progress else None))
    if source.label_column:
        for split in source.splits.values():
            split.layout(source.label_column)
    missing = frozenset(k for u in units for k in u.keys.values() if not store.has_entry(k))
    return BuildPlan(source, tuple(featurizers), tuple(units), missing, time.perf_counter() - started)


def _plan_unit(source: Source, featurizers, split_name: str, layer: str) -> Unit:
    split = source.splits[split_name]
    layout, parts = split.parts(layer)
    for f in featurizers:
        try:
            f.output_shape(layout.value_shape)
        except FeatstoreError as e:
            raise type(e)(f"featurizer {f.spec} cannot use column {layer!r} (split {split_name}): {e}") from e
    digest = parts_digest(parts, layout.dtype, (layout.rows, *layout.value_shape))
    split.release(parts)
    return Unit(split_name, layer, layout, digest, {f.spec: entry_key(digest, f.identity) for f in featurizers})


def execute(build_plan: BuildPlan, store: Store, device: str = "auto", progress: bool = False) -> BuildReport:
    """Compute and publish the plan's missing entries, then update the dataset's catalog.

    A bounded pipeline: one thread reads (copies) the next column to compute while this one is
    computed, another publishes finished entries (at most two waiting), so reading, computing
    and writing overlap while memory stays at a few columns.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    source = build_plan.source
    todo = [u for u in build_plan.units if any(k in build_plan.missing for k in u.keys.values())]
    report = BuildReport(source.name, store.location, devices.resolve(device) if todo else device)
    report.seconds["hash"] = build_plan.hash_seconds
    previous = store.read_catalog(source.name)
    created = {r.key: r.created for r in previous.rows} if previous else {}
    rows: list[CatalogRow] = []
    bar = tqdm(build_plan.units, desc=f"build {source.name}", unit="column", leave=False,
               disable=True if not progress else None)
    with ThreadPoolExecutor(1, "featstore-read") as reader, ThreadPoolExecutor(1, "featstore-write") as writer:
        reads = deque()
        upcoming = iter(todo)

        def read_ahead():
            unit = next(upcoming, None)
            if unit is not None:
                reads.append((unit, reader.submit(_read_unit, build_plan, unit, report)))

        writes: deque = deque()

        def write(info: EntryInfo, out: np.ndarray) -> None:
            while len(writes) >= 2:
                report.bytes_written += writes.popleft().result()
            writes.append(writer.submit(_write_entry, store, info, out, report))

        read_ahead()
        for unit in bar:
            host = None
            if reads and reads[0][0] is unit:
                host = reads.popleft()[1].result()
                read_ahead()
            rows += _build_unit(build_plan, unit, store, report, created, host, write)
            counts = Counter(e.status for e in report.entries)
            bar.set_postfix(computed=counts["computed"], reused=counts["reused"], refresh=False)
        while writes:
            report.bytes_written += writes.popleft().result()
    bar.close()
    splits = {name: SplitInfo(split.num_rows, _labels(store, source, name)) for name, split in source.splits.items()}
    first = next(iter(source.splits.values()))
    catalog = Catalog(
        dataset=source.name,
        splits=splits,
        rows=tuple(sorted(rows, key=lambda r: r.slot)),
        label_column=source.label_column,
        label_names=tuple(first.label_names) if first.label_names else None,
        updated=_now(),
    )
    store.write_catalog(previous.merged(catalog) if previous else catalog)
    report.seconds["total"] = time.perf_counter() - started + build_plan.hash_seconds
    return report


def _read_unit(build_plan: BuildPlan, unit: Unit, report: BuildReport):
    """The column as a host tensor ready for the device (pinned for a GPU); runs in the reader."""
    split = build_plan.source.splits[unit.split]
    with _timed(report, "read"):
        layout, parts = split.parts(unit.layer)
        host = devices.host_tensor(join_parts(layout, parts), report.device)
        split.release(parts)
    return host


def _write_entry(store: Store, info: EntryInfo, out: np.ndarray, report: BuildReport) -> int:
    with _timed(report, "write"):
        return out.nbytes if store.write_entry(info, out) else 0


def _build_unit(build_plan: BuildPlan, unit: Unit, store: Store, report: BuildReport, created: dict,
                host, write) -> list[CatalogRow]:
    tensor, rows = None, []
    for f in build_plan.featurizers:
        key = unit.keys[f.spec]
        shape = (unit.layout.rows, *f.output_shape(unit.layout.value_shape))
        status = "reused"
        if key in build_plan.missing and not store.has_entry(key):  # another build may have made it since
            if tensor is None:
                tensor = host.to(report.device, non_blocking=True)
            with _timed(report, "compute"):
                out = devices.to_stored(compute(f, tensor, shape, unit, report.device), f.dtype)
            created[key] = _now()
            write(_entry_info(key, unit.digest, f.identity, out, created[key], report.device, f.dtype), out)
            status = "computed"
        elif key not in created:  # an entry first made for another dataset
            created[key] = store.entry_info(key).created
        report.entries.append(EntryResult(unit.split, unit.layer, f.spec, key, status))
        nbytes = int(np.prod(shape)) * (4 if f.dtype == "float32" else 2)
        rows.append(CatalogRow(unit.split, unit.layer, f.spec, key, shape, f.dtype, nbytes, created[key]))
    return rows


def compute(f: BoundFeaturizer, x, shape: tuple[int, ...], unit: Unit, device: str):
    """`f` over the rows of `x` in batches (one call unless the featurizer is per-row and the rows
    do not fit), checked: float32 result of `shape`, finite. Out of memory halves the batch."""
    import torch

    rows = len(x)
    batch = devices.batch_rows(x[:1].nbytes, rows, device) if f.featurizer.per_row else rows
    outs, start = [], 0
    while start < rows or not outs:
        stop = min(rows, start + batch)
        where = f"featurizer {f.spec} on column {unit.layer!r} (split {unit.split}, rows {start}-{max(stop - 1, 0)})"
        try:
            out = f(x[start:stop])
        except Exception as e:  # a featurizer may raise anything; name it, the column and the rows
            if devices.is_out_of_memory(e) and f.featurizer.per_row and batch > 1:
                batch = max(1, batch // 2)
                log.warning("%s ran out of memory; retrying with batches of %d rows", where, batch)
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            raise FeaturizerError(f"{where} failed: {e!r}") from e
        expected = (stop - start, *shape[1:])
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or tuple(out.shape) != expected:
            got = f"{out.dtype}{list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise FeaturizerError(f"{where} returned {got}; it must return a floating tensor of shape {list(expected)}")
        finite = torch.isfinite(out.reshape(len(out), -1)).all(1)
        if not bool(finite.all()):
            bad = start + int((~finite).nonzero()[0, 0])
            raise FeaturizerError(f"{where} returned NaN or inf at row {bad}; nothing of it was stored")
        outs.append(out.to(torch.float32))
        start = stop
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _labels(store: Store, source: Source, split_name: str) -> str | None:
    if not source.label_column:
        return None
    values = source.splits[split_name].read(source.label_column).astype(np.int64, copy=False)
    digest = array_digest(values)
    key = entry_key(digest, LABELS_IDENTITY)
    if not store.has_entry(key):
        store.write_entry(_entry_info(key, digest, LABELS_IDENTITY, values, _now(), "cpu"), values)
    return key


def _entry_info(key, digest, identity, out: np.ndarray, created: str, device: str, dtype: str = "") -> EntryInfo:
    return EntryInfo(
        key=key,
        input_digest=digest,
        featurizer=identity,
        shape=tuple(out.shape),
        dtype=dtype or out.dtype.name,
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
