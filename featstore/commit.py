"""Catalogue what a build made, as its last step: the labels, the digest cache, then the
dataset's catalog, merged under the dataset's lock with what a concurrent build added meanwhile.
A failed build catalogues the columns it finished (`commit_finished`), so that `ls` and `open` see
them and gc keeps them."""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

import numpy as np

from featstore import device as devices
from featstore.digest_cache import updated_digests
from featstore.featurizers import is_yours
from featstore.keys import array_digest, dataset_slug, entry_key
from featstore.manifest import Catalog, EntryInfo, SplitInfo, now
from featstore.planning import LABELS_IDENTITY, BuildPlan
from featstore.report import BuildReport
from featstore.sources import Source
from featstore.store import Store

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 600  # seconds a build waits for a running gc, or for another build's catalog


def commit_catalog(build_plan: BuildPlan, store: Store, report: BuildReport) -> None:
    """Catalogue what `report` built (after its entries, as the last step of a build): the
    labels, the digest cache (with the file stats taken when the build began, so a file changed
    meanwhile is hashed again next time), then the catalog, merged under the dataset's lock with
    whatever a concurrent build added meanwhile. Rows of columns the dataset no longer has (a layer
    or split removed from it) are dropped from the catalog, so that it serves only the dataset as it
    is; their entries stay until `featstore gc`."""
    source = build_plan.source
    rows = [r if r.chunks else replace(r, **dict(zip(("chunk_rows", "chunks"), store.entry_chunks(r.key))))
            for r in report.rows]  # what loads need to skip each entry's metadata
    splits = {name: SplitInfo(split.num_rows, _labels(store, source, name, report))
              for name, split in source.splits.items()}
    first = next(iter(source.splits.values()))
    catalog = Catalog(
        dataset=source.name,
        splits=splits,
        rows=tuple(sorted(rows, key=lambda r: r.slot)),
        label_column=source.label_column,
        label_names=tuple(first.label_names) if first.label_names else None,
        updated=now(),
        modules={f.name: f.module for f in build_plan.featurizers if is_yours(f.module)},
    )
    checked = [(u.split, u.layer, u.layout) for u in build_plan.units]
    checked += [(s, source.label_column, layout) for s, layout in build_plan.labels.items()]
    digests = updated_digests(report.cache, report.seen, report.segments, checked)
    if digests and digests != report.cache[0]:
        store.write_digests(source.name, digests)
    with store.storage.lock(f"catalog-{dataset_slug(source.name)}", shared=False, timeout=LOCK_TIMEOUT):
        latest = store.read_catalog(source.name)  # a concurrent build may have added rows since we began
        merged = latest.merged(catalog) if latest else catalog
        gone, splits = source.gone(merged.rows), {k: v for k, v in merged.splits.items() if k in source.splits}
        if gone or splits != merged.splits:
            merged = replace(merged, rows=tuple(r for r in merged.rows if r.slot not in gone), splits=splits)
            report.dropped[:] = sorted(gone)
        report.labels = sorted(name for name, info in splits.items()  # new or changed labels
                               if info.labels and not (latest and name in latest.splits
                                                       and latest.splits[name].labels == info.labels))
        if latest is not None and latest.label_column:  # labels of a split gone, or of a label column gone
            report.dropped += [(name, latest.label_column, "labels") for name, info in sorted(latest.splits.items())
                               if info.labels and not (name in merged.splits and merged.splits[name].labels)]
        if latest is None or replace(merged, updated=latest.updated) != latest:  # a no-op writes nothing
            store.write_catalog(merged)


def commit_finished(build_plan: BuildPlan, store: Store, report: BuildReport) -> None:
    """Catalogue the columns a failed build finished whose entries are all published (a write
    may have failed): `ls` and `open` see them and gc keeps them. Never raises: the build's own
    error is the one to report."""
    try:
        report.rows[:] = [r for r in report.rows if store.has_entry(r.key)]
        if report.rows:
            commit_catalog(build_plan, store, report)
    except Exception as e:  # noqa: BLE001 (the disk may be full: the build's error says so)
        log.warning("could not catalogue the %d entries the build finished (%s); the next build reuses them, "
                    "unless a gc runs before it", len(report.rows), e)


def _labels(store: Store, source: Source, split_name: str, report: BuildReport) -> str | None:
    """The key of the split's labels entry, written if the store lacks it (its bytes counted in `report`)."""
    if not source.splits[split_name].has_labels(source.label_column):
        return None
    values = source.splits[split_name].labels(source.label_column)
    digest = array_digest(values)
    key = entry_key(digest, LABELS_IDENTITY)
    if not store.has_entry(key) and store.write_entry(entry_info(key, digest, LABELS_IDENTITY, values, now(), "cpu"),
                                                      values):
        report.bytes_written += values.nbytes
    return key


def entry_info(key, digest, identity, out: np.ndarray, created: str, device: str, dtype: str = "") -> EntryInfo:
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
    """What made an entry. From package metadata: importing `datasets` only for its version cost a
    fresh build 0.44 s on its critical path (2 cores)."""
    from importlib.metadata import version

    import featstore

    return {"featstore": featstore.__version__, "torch": devices.torch_version(), "zarr": version("zarr"),
            "datasets": version("datasets"), "numpy": np.__version__}
