"""What one compute call of a build covers: a column, a layer's splits joined (on a GPU, where a
small column leaves most of it idle: `joinable`, `compute_joined`), or a block of rows of a column
too large to copy out whole (`block_rows`, `compute_blocks`). `Prepared` is a column as the
build's readers hand it over.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from featstore import device as devices
from featstore.columns import ColumnLayout
from featstore.compute import compute
from featstore.errors import ColumnError, FeaturizerError
from featstore.featurizers import BoundFeaturizer
from featstore.manifest import CatalogRow
from featstore.planning import BuildPlan, Unit
from featstore.report import BuildReport, timed

log = logging.getLogger(__name__)

# A column larger than this whose featurizers are all per-row is copied out and computed a block
# of rows at a time (`compute_blocks`), so that no build needs room for its widest column: only
# its features stay in memory until written.
BLOCK_BYTES = 256 << 20
# A GPU computes the splits of one layer in one call per featurizer while they fit in this: a
# small column leaves most of it idle. 1k svd on an H200, all 128 layers: the Jacobi kernel took
# 0.695 s as 800- and 200-row calls, 0.496 s as one 1000-row call per layer, and cold builds 0.95
# against 1.29 s (benchmarks/probe_gpu_compute.py, ab_build.py --device cuda, medians).
JOIN_BYTES = 256 << 20


@dataclass
class Prepared:
    """A unit after hashing: its entry keys, the featurizers the store lacks, and (if any) the
    column as a host tensor."""

    unit: Unit
    digest: str
    keys: dict[str, str]  # featurizer spec -> entry key
    missing: set[str]
    host: object = None  # the column's rows from `offset` on
    column: tuple | None = None  # or (layout, its `Split.blocks`), copied out a block at a time (`block_rows`)
    offset: int = 0
    appends: dict[str, CatalogRow] = field(default_factory=dict)  # spec -> the entry its rows extend
    segments: list[str] | None = None  # the digest of each data file's rows, when the column was hashed


def block_rows(layout: ColumnLayout, featurizers: Iterable[BoundFeaturizer]) -> int:
    """Rows of a column copied out and computed at once by `featurizers`: all of them, or, for a
    column over BLOCK_BYTES when they are all per-row, as many as fit in BLOCK_BYTES (one at least)."""
    if layout.nbytes <= BLOCK_BYTES or not all(f.featurizer.per_row for f in featurizers):
        return max(layout.rows, 1)
    return max(1, BLOCK_BYTES // (layout.nbytes // layout.rows))


def copied(layout: ColumnLayout, featurizers: Iterable[BoundFeaturizer]) -> int:
    """Bytes of a column in memory at once while `featurizers` compute it: a block of it, or all of it."""
    return min(layout.rows, block_rows(layout, featurizers)) * (layout.nbytes // max(layout.rows, 1))


@contextmanager
def copying_out(build_plan: BuildPlan, unit: Unit, layout: ColumnLayout, rows: int):
    """Around copying `rows` rows of a column out (into a host tensor, `device.host_tensor`):
    no memory left for them is a ColumnError that says why they are copied out at once and what
    to do."""
    try:
        yield
    except Exception as e:
        if not devices.is_out_of_memory(e):
            raise
        whole = [f.spec for f in build_plan.featurizers if not f.featurizer.per_row]
        why = f"featurizer {', '.join(whole)} computes a column whole (per_row=False)" if whole else \
            f"a column is copied out {BLOCK_BYTES / 1e6:.0f} MB of rows at a time at most"
        raise ColumnError(f"column {unit.layer!r} (split {unit.split}): no memory left to copy out {rows} rows "
                          f"({rows * (layout.nbytes // max(layout.rows, 1)) / 1e6:.1f} MB): {why}. Free memory, or leave the "
                          "column out with --layers") from e


def joins(device: str) -> bool:
    """Whether a build on `device` computes the splits of a layer together (`joinable`): on a GPU,
    where a small column leaves most of it idle. On the CPU, columns are computed side by side."""
    return device.startswith("cuda")


def joinable(build_plan: BuildPlan, group: list[Prepared], unit: Unit, read: Future) -> bool:
    """Whether the next column (`unit`, being read by `read`) joins `group` (columns of one layer)
    to be computed in one call per featurizer on a GPU: another split of the same layer, values of
    the same shape and dtype, the same featurizers missing, all per-row, nothing appended, none in
    blocks, and the columns together within JOIN_BYTES. Waits for `read` only when the rest holds."""
    first = group[0]
    layout = first.unit.layout
    if not (first.missing and unit.layer == first.unit.layer and unit.layout.value_shape == layout.value_shape
            and unit.layout.dtype == layout.dtype
            and sum(g.unit.layout.nbytes for g in group) + unit.layout.nbytes <= JOIN_BYTES
            and not any(g.appends or g.offset or g.column for g in group)
            and all(f.featurizer.per_row for f in build_plan.featurizers if f.spec in first.missing)):
        return False
    if read.exception() is not None:  # raised when its turn comes, after the group is done
        return False
    ready = read.result()
    return ready.missing == first.missing and not ready.appends and not ready.offset and ready.column is None


def compute_joined(build_plan: BuildPlan, group: list[Prepared], report: BuildReport) -> list[dict[str, np.ndarray]]:
    """The missing features of the columns of `group` (see `joinable`), one call per featurizer
    over their rows joined, split back per column. A call that fails leaves that featurizer to each
    column's own call (`builder._build_unit`), whose error names its split and rows."""
    import torch

    first = group[0]
    rows = [g.unit.layout.rows for g in group]
    outs: list[dict[str, np.ndarray]] = [{} for _ in group]
    try:
        x = torch.empty((sum(rows), *first.unit.layout.value_shape), dtype=first.host.dtype, device=report.device)
    except Exception as e:
        if devices.is_out_of_memory(e):  # the columns one by one need half the room
            return outs
        raise
    for g, start in zip(group, np.cumsum([0, *rows[:-1]])):
        x[start : start + g.unit.layout.rows].copy_(g.host, non_blocking=True)
    splits = "+".join(g.unit.split for g in group)
    for f in build_plan.featurizers:
        if f.spec not in first.missing:
            continue
        shape = (len(x), *f.output_shape(first.unit.layout.value_shape))
        try:
            with timed(report, "compute"):
                out = compute(f, x, shape, first.unit.layer, splits, report.device)
        except FeaturizerError:
            continue
        for i, part in enumerate(np.split(out, np.cumsum(rows[:-1]))):
            outs[i][f.spec] = part
    return outs


def compute_blocks(build_plan: BuildPlan, ready: Prepared, report: BuildReport) -> dict[str, np.ndarray]:
    """The missing features of a column too large to copy out whole (`block_rows`), a block of
    rows at a time: each block is copied (pinned, for a GPU), computed by every missing featurizer
    (from the row its old entry ends at, if it extends one, as `builder._build_unit` does), and let go of
    before the next. Only the features stay, each in one array filled block by block."""
    layout, blocks = ready.column
    ready.column = None
    unit, step = ready.unit, block_rows(layout, build_plan.featurizers)
    missing = [(f, ready.appends[f.spec].shape[0] if f.spec in ready.appends else 0)  # (featurizer, its first row)
               for f in build_plan.featurizers if f.spec in ready.missing]
    outs: dict[str, np.ndarray] = {}
    while True:
        with timed(report, "read"), copying_out(build_plan, unit, layout, min(step, layout.rows - ready.offset)):
            begin, values = next(blocks, (None, None))
            host = None if values is None else devices.host_tensor(values, report.device)
        if host is None:
            return outs
        end = begin + len(host)
        tensor = on_device(host, unit, report.device)
        for f, start in missing:
            first = max(start, begin)
            if first >= end:
                continue
            with timed(report, "compute"):
                out = compute(f, tensor[first - begin :], (end - first, *f.output_shape(layout.value_shape)),
                              unit.layer, unit.split, report.device, first=first)
            if f.spec not in outs:  # its first block
                outs[f.spec] = np.empty((layout.rows - start, *out.shape[1:]), out.dtype)
            outs[f.spec][first - start : end - start] = out
        del values, host, tensor


def on_device(host, unit: Unit, device: str):
    """A column's host tensor (or a block of its rows) on `device`; where a GPU has no room for
    all of it, the pinned host tensor itself, which `compute` moves there a batch at a time."""
    try:
        return host.to(device, non_blocking=True)
    except Exception as e:
        if not devices.is_out_of_memory(e):
            raise
        log.warning("column %r (split %s, %.1f MB) does not fit in the free memory of %s: its batches go there one "
                    "at a time", unit.layer, unit.split, host.nbytes / 1e6, device)
        return host
