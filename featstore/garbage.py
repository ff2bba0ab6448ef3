"""`featstore gc`: remove what no catalog references, then the least recently used entries over a
size budget; never what a running build or an open reader holds. `featstore forget`: drop a
dataset's catalog rows (all, or some splits, layers, featurizers), so that gc may remove them.

gc holds the store's lock alone, so it waits for running builds (which share it) and builds wait
for it: no build can reuse an entry that gc is removing. Readers (`featstore.open`) lease the
keys of their catalog while they live; a lease whose process is gone (same host, dead pid) is
stale and removed. An entry disappears in one rename before its files are deleted, so a reader
never sees half an entry. Staging leftovers of crashed builds go too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace

from featstore.errors import NotFoundError, ReadOnlyStore
from featstore.keys import dataset_slug
from featstore.manifest import CatalogRow, entry_uses, layer_matches, now
from featstore.storage import holder_alive
from featstore.store import Store

LOCK_TIMEOUT = 600  # seconds gc waits for running builds


@dataclass
class GcReport:
    dry_run: bool
    removed: list[tuple[str, int, str]] = field(default_factory=list)  # (key, bytes, why)
    held: int = 0  # entries kept because an open reader leases them
    leftovers: list[str] = field(default_factory=list)  # staging/trash directories of crashed builds
    stale_leases: list[str] = field(default_factory=list)
    size_before: int = 0

    def __repr__(self) -> str:  # not every removed key
        return (f"GcReport({'dry run: ' if self.dry_run else ''}{len(self.removed)} entries removed, {self.freed} "
                f"of {self.size_before} bytes freed)")

    @property
    def freed(self) -> int:
        return sum(size for _, size, _ in self.removed)

    def to_json(self) -> dict:
        return {"dry_run": self.dry_run, "freed": self.freed, "size_before": self.size_before,
                "size_after": self.size_before - self.freed, "held": self.held,
                "removed": [{"key": k, "bytes": b, "why": w} for k, b, w in self.removed],
                "leftovers": self.leftovers, "stale_leases": self.stale_leases}


def gc(store: Store, dry_run: bool = False, max_size: int | None = None, keep_days: float = 0.0,
       timeout: float | None = LOCK_TIMEOUT) -> GcReport:
    """Remove unreferenced entries, then least recently used ones until the entries fit in
    `max_size` bytes; keep anything used in the last `keep_days` days and anything leased."""
    report = GcReport(dry_run)
    with _alone(store, "store", dry_run, timeout):
        held: set[str] = set()
        for path, lease in store.leases().items():
            if holder_alive(lease):
                held.update(lease.get("keys", []))
            else:
                report.stale_leases.append(path)
        uses = entry_uses(store.catalogs())
        now, keep = time.time(), keep_days * 86400
        entries = []  # (last used, key, bytes)
        for key in store.entry_keys():
            path = store.entry_path(key)
            entries.append((store.storage.mtime(path), key, store.storage.size(path)))
        report.size_before = total = sum(size for _, _, size in entries)
        for used, key, size in sorted(entries):
            if key in held:
                report.held += 1
            elif now - used >= keep and key not in uses:
                report.removed.append((key, size, "unreferenced"))
                total -= size
        if max_size is not None:
            gone = {key for key, _, _ in report.removed}
            for used, key, size in sorted(entries):  # least recently used first
                if total <= max_size:
                    break
                if key not in gone and key not in held and now - used >= keep:
                    serves = f": {uses[key]}" if key in uses else ""
                    report.removed.append((key, size, f"over the size budget (least recently used){serves}"))
                    total -= size
        report.leftovers = [f"{folder}/{name}" for folder in ("staging", "trash") for name in store.storage.list(folder)]
        report.leftovers += [store.entry_path(key) for key in store.entry_keys(published=False)]
        if not dry_run:
            for path in report.stale_leases:
                store.release(path)
            for key, _, _ in report.removed:
                store.delete_entry(key)
            for path in report.leftovers:
                store.storage.delete(path)
    return report


@contextmanager
def _alone(store: Store, lock: str, dry_run: bool, timeout: float | None) -> Iterator[None]:
    """Hold the store's lock `lock` exclusively. A dry run on a store that cannot be written here,
    not even its lock file (mounted read-only without a locks/ folder; read-only credentials), goes
    without: it changes nothing, and nothing that changes the store runs from here."""
    with ExitStack() as held:
        try:
            held.enter_context(store.storage.lock(lock, shared=False, timeout=timeout))
        except ReadOnlyStore:
            if not dry_run:
                raise
        yield


@dataclass
class ForgetReport:
    dataset: str
    dry_run: bool
    rows: list[CatalogRow] = field(default_factory=list)  # the catalog rows forgotten
    catalog_removed: bool = False  # no row was left: the catalog (and digest cache) went too
    unreferenced: dict[str, int] = field(default_factory=dict)  # entry key -> bytes: no catalog references it now

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "dry_run": self.dry_run, "catalog_removed": self.catalog_removed,
                "forgotten": [{"split": r.split, "layer": r.layer, "featurizer": r.featurizer, "key": r.key}
                              for r in self.rows],
                "unreferenced": len(self.unreferenced), "unreferenced_bytes": sum(self.unreferenced.values())}


def forget(store: Store, dataset: str, splits: Iterable[str] = (), layers: Iterable[str] = (),
           featurizers: Iterable[str] = (), dry_run: bool = False, timeout: float | None = LOCK_TIMEOUT) -> ForgetReport:
    """Drop the rows of `dataset`'s catalog in `splits`, with a layer matching a glob of `layers`
    and a featurizer in `featurizers` (a name matches every spec of it); each left empty matches
    all. Entries stay until gc, which removes those no other catalog references; until then a
    build of the same data re-catalogues them without computing."""
    splits, layers, featurizers = tuple(splits), tuple(layers), tuple(featurizers)
    report = ForgetReport(dataset, dry_run)
    with _alone(store, f"catalog-{dataset_slug(dataset)}", dry_run, timeout):  # as builds commit
        catalog = store.read_catalog(dataset)
        if catalog is None:
            held = ", ".join(c.dataset for c in store.catalogs()) or "none"
            raise NotFoundError(f"the store {store.location} holds no features of {dataset!r} (it holds: {held})")
        report.rows = [r for r in catalog.rows if (not splits or r.split in splits)
                       and (not layers or any(layer_matches(r.layer, g) for g in layers))
                       and (not featurizers or {r.featurizer, r.featurizer.partition(":")[0]} & set(featurizers))]
        if not report.rows:
            held = [", ".join(sorted({getattr(r, name) for r in catalog.rows})) for name in ("split", "featurizer")]
            labels = (" A split's labels go with the last of its features (forget the split: --split NAME)."
                      if "labels" in featurizers or catalog.label_column in layers else "")
            raise NotFoundError(f"no features of {dataset!r} match; it holds splits {held[0]} and featurizers "
                                f"{held[1]} (its layers: `featstore ls --dataset {dataset}`).{labels}")
        gone = {r.slot for r in report.rows}
        kept = tuple(r for r in catalog.rows if r.slot not in gone)
        report.catalog_removed = not kept
        # a split none of whose features are left is forgotten with its labels
        splits = {name: info for name, info in catalog.splits.items() if any(r.split == name for r in kept)}
        candidates = {r.key for r in report.rows} | {s.labels for n, s in catalog.splits.items()
                                                     if s.labels and n not in splits}
        kept_catalog = replace(catalog, rows=kept, splits=splits)
        others = [c for c in store.catalogs() if c.dataset != dataset] + ([kept_catalog] if kept else [])
        referenced = {r.key for c in others for r in c.rows} | {s.labels for c in others for s in c.splits.values()}
        report.unreferenced = {key: store.storage.size(store.entry_path(key))
                               for key in sorted(candidates - referenced) if store.has_entry(key)}
        if not dry_run:
            if report.catalog_removed:
                store.delete_catalog(dataset)
            else:
                store.write_catalog(replace(kept_catalog, updated=now()))
    return report
