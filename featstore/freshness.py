"""What a build would do, and why, without doing it: `featstore status` and `featstore lock`.

For every (split, layer, featurizer) of the current data and the current featurizer code, the
entry key a build would want is `entry_key(column digest, identity)`. A slot is `fresh` when the
catalog already serves that key and the store holds it, `stale` when the catalog serves another
key (the reason says what changed: input bytes, featurizer code, params, version, format), and
`missing` when nothing is catalogued or the entry is gone. Each split's labels are a slot too
(featurizer `labels`, stale when the label column changed). Column digests come from the store's
digest cache while the dataset files' stats match, else from hashing the columns.

A lockfile records the same expected keys (per split and layer its input digest, per featurizer
its identity), so `status --lock` can say what a change invalidates on a machine without a store.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from featstore.digest_cache import cached_digests, column_digest, known_layouts
from featstore.errors import FeatstoreError, SpecError, StoreError
from featstore.featurizers import BoundFeaturizer, import_modules, is_yours, parse_spec
from featstore.keys import KEY_VERSION, array_digest, canonical_json, entry_key
from featstore.manifest import Catalog, CatalogRow
from featstore.planning import LABELS_IDENTITY, check_names, check_output, extends, why_stale
from featstore.progress import counted
from featstore.sources import Source
from featstore.store import Store

LOCK_FORMAT = 1
ENTRY_REMOVED = "entry removed (by gc or verify --repair)"  # a catalogued entry gone from the store
NOT_CATALOGUED = "not catalogued (its entry is stored)"  # after a killed build, a forget, for another dataset


@dataclass(frozen=True)
class SlotStatus:
    split: str
    layer: str
    featurizer: str
    state: str  # "fresh" | "stale" | "missing"
    reason: str  # "" when fresh
    key: str  # the entry a build would want
    input_bytes: int  # the column's bytes (what a build would read to compute it)
    stored: bool = False  # the store holds the wanted entry: a build catalogues it, computing nothing


@dataclass
class StatusReport:
    dataset: str
    slots: list[SlotStatus] = field(default_factory=list)
    seconds: float = 0.0

    def __repr__(self) -> str:  # a notebook shows this, not the 514 slots of 1k
        c = self.counts
        return f"StatusReport({self.dataset!r}: {c['fresh']} fresh, {c['stale']} stale, {c['missing']} missing)"

    @property
    def counts(self) -> dict[str, int]:
        """{"fresh": n, "stale": n, "missing": n}: every state, 0 included (a CI script reads them)."""
        return {"fresh": 0, "stale": 0, "missing": 0} | Counter(s.state for s in self.slots)

    @property
    def fresh(self) -> bool:
        return all(s.state == "fresh" for s in self.slots)

    def work(self) -> dict[str, int]:
        """What a build would do: entries to compute, the columns they need and their bytes,
        entries it would only catalogue (`reused`: the store holds them, e.g. from a killed
        build or another dataset sharing the layer), and catalogued features it would drop
        (`dropped`: their column is gone from the dataset; such a slot has no key)."""
        todo = [s for s in self.slots if s.state != "fresh" and s.key]
        compute = [s for s in todo if not s.stored]
        columns = {(s.split, s.layer): s.input_bytes for s in compute}
        return {"entries": len(compute), "columns": len(columns), "input_bytes": sum(columns.values()),
                "reused": len(todo) - len(compute), "dropped": sum(not s.key for s in self.slots)}

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "fresh": self.fresh, "counts": self.counts, "work": self.work(),
                "seconds": round(self.seconds, 4), "slots": [asdict(s) for s in self.slots]}


def _digests(source: Source, store: Store | None, cache: tuple | None = None, cuts: dict | None = None,
             progress: bool = False) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], dict[int, str]]]:
    """Every chosen column's digest: from the digest cache where it vouches, else hashed (in
    threads, with a progress bar on a terminal if `progress`); and, for the columns hashed, the
    digests of their first n rows for each n that `cuts` names per (split, layer) (how an append
    is recognised: see keys.column_digests)."""
    _, _, trusted = cache or cached_digests(store, source, progress=progress)
    todo = [(s, layer) for layer in source.layers for s in source.splits if layer not in trusted.get(s, {})]
    with ThreadPoolExecutor(4) as pool:
        hashing = pool.map(lambda unit: column_digest(source.splits[unit[0]], unit[1], (cuts or {}).get(unit, ())), todo)
        if progress and todo:  # tqdm's import costs 60 ms of a status that finds everything fresh
            hashing = counted(hashing, f"hash {source.name}", "column", True, total=len(todo))
        hashed = dict(zip(todo, hashing, strict=True))  # strict: the last column is counted too
    out = {unit: d.digest for unit, d in hashed.items()}
    prefixes = {unit: d.prefixes for unit, d in hashed.items()}
    for split, layers in trusted.items():
        out.update({(split, layer): d for layer, d in layers.items() if layer in source.layers})
    return out, prefixes


def _layout(source: Source, split: str, layer: str, known: dict):
    """The column's layout, from the one a build cached (unchanged files), else by checking it
    (which reads its list offsets: 2.5 s for the 1k preset's 256 columns from a cold page cache)."""
    return known.get((split, layer)) or source.splits[split].layout(layer)


def _row_bytes(layout) -> int:
    return int(np.prod(layout.value_shape, dtype=np.int64)) * layout.dtype.itemsize


def status(source: Source, featurizers: tuple[BoundFeaturizer, ...], store: Store,
           progress: bool = False) -> StatusReport:
    """The state of every (split, layer, featurizer) of `source` in `store`; reads, never writes.
    With `progress`, columns it hashes are counted on a progress bar (on a terminal)."""
    started = time.perf_counter()
    check_names(source)  # a build stops there: so does status
    cache = cached_digests(store, source, progress=progress)
    catalog = store.read_catalog(source.name)
    served = {r.slot: r for r in catalog.rows} if catalog else {}
    known = known_layouts(cache)
    layouts = {(s, layer): _layout(source, s, layer, known) for layer in source.layers for s in source.splits}
    cuts = {}  # (split, layer) -> row counts of catalogued entries that the column may extend
    for (split, layer), layout in layouts.items():
        for f in featurizers:
            old = served.get((split, layer, f.spec))
            if extends(old, f, layout.rows):
                cuts.setdefault((split, layer), set()).add(old.shape[0])
    digests, prefixes = _digests(source, store, cache, cuts, progress)
    report = StatusReport(source.name)
    dtypes = {}  # (name, params) -> the specs the catalog holds it as: a `missing` one may differ only in dtype
    for r in served.values():
        dtypes.setdefault((r.identity.get("name"), canonical_json(r.identity.get("params"))), set()).add(r.featurizer)
    for layer in source.layers:
        for split in source.splits:
            digest, layout = digests[(split, layer)], layouts[(split, layer)]
            rows, row_bytes = layout.rows, _row_bytes(layout)
            for f in featurizers:
                key = entry_key(digest, f.identity)
                old = served.get((split, layer, f.spec))
                stored = store.has_entry(key)
                if not stored:  # a build would compute it, or stop with this error: so does status
                    check_output(f, layer, split, layout.value_shape)
                size = rows * row_bytes
                if old is None:
                    state, reason = "missing", "not built" if not stored else NOT_CATALOGUED
                    built_as = sorted(dtypes.get((f.name, canonical_json(f.params)), set()) - {f.spec})
                    if not stored and built_as:  # `build --dtype float16` then `status -f svd`
                        reason += f" (the store holds {', '.join(built_as)}: the same featurizer, another stored dtype)"
                elif (not stored and extends(old, f, rows) and store.has_entry(old.key)
                      and prefixes.get((split, layer), {}).get(old.shape[0]) == old.input_digest):
                    kept = old.shape[0]  # a build computes the new rows only, as it says
                    state, reason, size = "stale", f"{rows - kept} rows appended to {kept}", (rows - kept) * row_bytes
                elif old.key != key:
                    state, reason = "stale", why_stale(old, digest, f.identity)
                elif not stored:
                    state, reason = "missing", ENTRY_REMOVED
                else:
                    state, reason = "fresh", ""
                report.slots.append(SlotStatus(split, layer, f.spec, state, reason, key, size, stored))
    specs = {f.spec for f in featurizers}
    for (split, layer, spec), reason in sorted(source.gone(served.values()).items()):  # a build drops them
        if spec in specs and source.wants(layer):
            report.slots.append(SlotStatus(split, layer, spec, "stale", reason, "", 0, False))
    if source.label_column:
        report.slots += _label_slots(source, catalog, store)
    for name, info in sorted(catalog.splits.items()) if catalog and catalog.label_column else ():
        why = source.missing(name, catalog.label_column, "label column")
        if info.labels and why:  # a build drops these labels
            report.slots.append(SlotStatus(name, catalog.label_column, "labels", "stale", why, "", 0))
    report.seconds = time.perf_counter() - started
    return report


def _label_slots(source: Source, catalog: Catalog | None, store: Store) -> list[SlotStatus]:
    """One slot per labelled split for its labels (featurizer `labels`), keyed like any entry;
    before the first build (no `catalog`) they are missing, as the features are."""
    out = []
    for split_name, split in source.splits.items():
        if not split.has_labels(source.label_column):  # an unlabelled split: a labels slot only if it had some
            continue
        values = split.labels(source.label_column)
        key, size = labels_key(values)
        served, stored = catalog.splits.get(split_name) if catalog else None, store.has_entry(key)
        state, reason = ((("fresh", "") if stored else ("missing", ENTRY_REMOVED)) if served and served.labels == key
                         else ("stale", _labels_change(values, served, store)) if served and served.labels
                         else ("missing", NOT_CATALOGUED if stored else "not built"))
        out.append(SlotStatus(split_name, source.label_column, "labels", state, reason, key, size, stored))
    return out


def _labels_change(values: np.ndarray, served, store: Store) -> str:
    """Why a split's labels are stale: `N rows appended to M` where the catalogued labels (of
    `served`, M rows) begin the current ones, as appended features are said to; else `labels
    changed` (edited, or renumbered by a new class)."""
    old = served.rows
    if len(values) > old and store.has_entry(served.labels):
        with contextlib.suppress(StoreError):  # unreadable: say no more than that they changed
            if np.array_equal(store.read_entry(served.labels), values[:old]):
                return f"{len(values) - old} rows appended to {old}"
    return "labels changed"


def labels_key(values: np.ndarray) -> tuple[str, int]:
    """(the entry key of a split's labels, their bytes): the int64 labels keyed like any entry."""
    return entry_key(array_digest(values), LABELS_IDENTITY), values.nbytes


def make_lock(source: Source, featurizers: tuple[BoundFeaturizer, ...], store: Store | None = None,
              progress: bool = False) -> dict:
    """The lockfile of `source` under `featurizers`: per split and layer the input digest, per
    featurizer its identity, and the entry keys they give; the --layers globs the layers were
    chosen by (null: every layer column); the label column and the key of each split's labels
    (null without one). JSON, sorted, one value per line."""
    in_main = [f.spec for f in featurizers if f.module == "__main__"]
    if in_main:
        raise SpecError(f"featurizer {', '.join(in_main)} is defined in __main__ where no module name reaches it (a "
                        "notebook, an interactive session, a script outside the current directory): a lockfile names "
                        "the module that defines each featurizer, for `featstore status --lock` to import; move it "
                        "into a module, or run the script from its project's directory")
    check_names(source)
    digests = _digests(source, store, progress=progress)[0]
    return {
        "featstore_lock": LOCK_FORMAT,
        "key_version": KEY_VERSION,
        "dataset": source.name,
        "layers": list(source.patterns) or None,  # the --layers globs: `status --lock` checks those layers
        "featurizers": {f.spec: f.identity for f in featurizers},
        "modules": sorted({f.module for f in featurizers if is_yours(f.module)}),
        "columns": {s: {layer: digests[(s, layer)] for layer in source.layers} for s in source.splits},
        "entries": {s: {layer: {f.spec: entry_key(digests[(s, layer)], f.identity) for f in featurizers}
                        for layer in source.layers} for s in source.splits},
        "labels": {"column": source.label_column, "entries": {s: labels_key(split.labels(source.label_column))[0]
                                                              for s, split in source.splits.items()
                                                              if split.has_labels(source.label_column)}}
        if source.label_column else None,
    }


def lock_bytes(lock: dict) -> bytes:
    return (json.dumps(lock, indent=1, sort_keys=True) + "\n").encode()


def read_lock(raw: bytes, where: str) -> dict:
    try:
        lock = json.loads(raw)
    except ValueError as e:
        raise FeatstoreError(f"{where} is not a featstore lockfile ({e}); write one with `featstore lock`") from e
    if not isinstance(lock, dict) or lock.get("featstore_lock") != LOCK_FORMAT:
        raise FeatstoreError(f"{where} is not a featstore lockfile of format {LOCK_FORMAT}; "
                             "write one with `featstore lock`")
    return lock


def status_against_lock(source: Source, lock: dict, progress: bool = False) -> StatusReport:
    """Compare the current data and featurizer code with a lockfile, without a store: every entry
    key that differs from the locked one is stale (with the reason), every slot the lock lacks is
    missing, every locked layer the data lacks is stale ("layer gone")."""
    started = time.perf_counter()
    if "__main__" in lock.get("modules", []):  # written by an earlier featstore from a script run as __main__
        raise SpecError("the lockfile names the module __main__ for its featurizers: no other process can import "
                        "that; write it again with `featstore lock --featurizer module:function` (or featstore.lock "
                        "from the script, with this featstore)")
    import_modules(lock.get("modules", []), "the lockfile names it: run from the project that has it, or install it")
    featurizers = tuple(parse_spec(spec) for spec in lock["featurizers"])
    digests = _digests(source, None, progress=progress)[0]
    report = StatusReport(source.name)
    locked_columns, locked_entries = lock["columns"], lock["entries"]
    for split in sorted(set(source.splits) | set(locked_columns)):
        layers = set(source.layers) if split in source.splits else set()
        locked = [layer for layer in locked_columns.get(split, {}) if source.wants(layer)]
        for layer in sorted(layers | set(locked)):
            here = layer in layers
            gone = "" if here else source.missing(split, layer)
            if not here and not gone:  # in the data, but not a column this status looks at
                continue
            digest = digests[(split, layer)] if here else ""
            layout = _layout(source, split, layer, {}) if here else None
            size = layout.rows * _row_bytes(layout) if layout else 0
            for f in featurizers:
                key = entry_key(digest, f.identity) if here else ""
                then = locked_entries.get(split, {}).get(layer, {}).get(f.spec)
                if then is None:
                    state, reason = "missing", "not in the lockfile"
                elif not here:
                    state, reason = "stale", gone
                elif then == key:
                    state, reason = "fresh", ""
                else:
                    old = CatalogRow(split, layer, f.spec, then, (), "", 0, "", locked_columns[split][layer],
                                     lock["featurizers"][f.spec])
                    state, reason = "stale", why_stale(old, digest, f.identity)
                report.slots.append(SlotStatus(split, layer, f.spec, state, reason, key, size))
    if "labels" in lock:  # locks from before labels were locked have no such field: not checked
        report.slots += _locked_label_slots(source, lock["labels"])
    report.seconds = time.perf_counter() - started
    return report


def _locked_label_slots(source: Source, locked: dict | None) -> list[SlotStatus]:
    """Each split's labels against the lockfile's: fresh, stale (labels changed; their column or
    split gone), or missing (not in the lockfile: the data had no label column then)."""
    column = locked["column"] if locked else source.label_column
    then = locked["entries"] if locked else {}
    out = []
    for split in sorted(set(source.splits) | set(then)) if column else ():
        gone = source.missing(split, column, "label column")
        if gone:
            if split in then:
                out.append(SlotStatus(split, column, "labels", "stale", gone, "", 0))
            continue
        key, size = labels_key(source.splits[split].labels(column))
        state, reason = (("missing", "not in the lockfile") if split not in then
                         else ("fresh", "") if then[split] == key else ("stale", "labels changed"))
        out.append(SlotStatus(split, column, "labels", state, reason, key, size))
    return out
