"""`featstore verify`: check every entry's files against what was recorded when it was published,
and optionally recompute a sample of entries from their datasets.

Like diskcache's `Cache.check(fix=False)`: it reports, and repairs only when asked. `repair` drops
a corrupt entry (one rename, then its files), so the next build recomputes it; catalogs keep
pointing at its key, and `featstore status` reports it missing until then.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np

from featstore.errors import FeatstoreError, StoreError, UnknownFeaturizer
from featstore.manifest import entry_uses
from featstore.progress import counted
from featstore.store import Store

TOLERANCE = 1e-4  # recomputed vs stored: max |difference| / max |stored|, plus the stored dtype's rounding
_ROUNDING = {"float32": 0.0, "float16": 2.0**-10, "bfloat16": 2.0**-7}


@dataclass
class VerifyReport:
    checked: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    corrupt: dict[str, str] = field(default_factory=dict)  # key -> what is wrong
    repaired: list[str] = field(default_factory=list)
    recomputed: int = 0
    mismatched: dict[str, str] = field(default_factory=dict)  # key -> how far off
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why it could not be recomputed
    damaged_catalogs: dict[str, str] = field(default_factory=dict)  # catalog file -> what is wrong
    removed: int = 0  # catalogued entries the store no longer holds (gc --max-size, --repair): not a fault

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.mismatched and not self.damaged_catalogs

    def to_json(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "bytes_read": self.bytes_read,
                "seconds": round(self.seconds, 4), "corrupt": self.corrupt, "repaired": self.repaired,
                "recomputed": self.recomputed, "mismatched": self.mismatched, "skipped": self.skipped,
                "damaged_catalogs": self.damaged_catalogs, "removed": self.removed}


def verify(store: Store, sample: float = 1.0, recompute: float = 0.0, repair: bool = False,
           seed: int | None = None, progress: bool = False) -> VerifyReport:
    """Check a `sample` fraction of the entries (all by default) chunk by chunk; recompute a
    `recompute` fraction of the catalogued features from their datasets; with `repair`, drop
    the corrupt entries. With `progress`, progress on stderr counts both (featstore.progress)."""
    for name, value in (("sample", sample), ("recompute", recompute)):
        if not 0 <= value <= 1:
            raise FeatstoreError(f"--{name} must be a fraction between 0 and 1, not {value}")
    started = time.perf_counter()
    rng = random.Random(seed)
    report = VerifyReport()
    keys = store.entry_keys()
    for key in counted(sorted(rng.sample(keys, _how_many(len(keys), sample))), "verify", "entry", progress):
        problem, read = store.check_entry(key)
        report.checked += 1
        report.bytes_read += read
        if problem:
            report.corrupt[key] = problem
    catalogs = []
    for path in store.catalog_paths():  # never repaired: without it, gc would remove the entries it lists
        try:
            catalogs.append(store.catalog_at(path))
        except StoreError as e:
            report.damaged_catalogs[path] = str(e)
    uses, stored = entry_uses(catalogs), set(keys)
    report.removed = len(set(uses) - stored)
    for key, problem in report.corrupt.items():
        report.corrupt[key] = f"{problem}: {uses[key]}" if key in uses else f"{problem} (no catalog uses it)"
    if recompute:
        rows = [(c, r) for c in sorted(catalogs, key=lambda c: c.dataset) for r in c.rows  # removed ones: counted
                if r.key in stored and r.key not in report.corrupt]
        chosen = sorted(rng.sample(rows, _how_many(len(rows), recompute)), key=lambda x: x[1].slot)
        for catalog, row in counted(chosen, "recompute", "feature", progress):
            _recompute(store, catalog.dataset, row, report, catalog.modules.get(row.featurizer.partition(":")[0]))
    if repair:
        for key in report.corrupt:
            store.delete_entry(key)
            report.repaired.append(key)
    report.seconds = time.perf_counter() - started
    return report


def _how_many(n: int, fraction: float) -> int:
    """The size of a `fraction` sample of `n` things: at least one where the fraction is not 0 (a
    nightly `--sample 0.1` of a small store checked nothing)."""
    return max(1, round(n * fraction)) if n and fraction else 0


def _recompute(store: Store, dataset: str, row, report: VerifyReport, module: str | None) -> None:
    """Compute `row` again from its dataset on the CPU and compare with what the store holds;
    `module`: the one that registered its featurizer, when it is the user's."""
    from featstore import device, planning
    from featstore.compute import compute
    from featstore.digest_cache import column_digest
    from featstore.featurizers import parse_spec
    from featstore.grouping import block_rows
    from featstore.sources import load_source

    what = f"{dataset} {row.split}/{row.layer} {row.featurizer}"
    try:
        split = load_source(dataset, (row.layer,)).splits[row.split]
        f = parse_spec(row.featurizer)
    except (FeatstoreError, KeyError) as e:
        yours = "" if not isinstance(e, UnknownFeaturizer) else \
            f" (one of yours, from module {module!r}: `featstore verify --import {module}`)" if module else \
            " (one of yours registered by name: `featstore verify --import` its module)"
        report.skipped[row.key] = f"{what}: cannot load it: {e}{yours}"
        return
    why = planning.why_stale(row, column_digest(split, row.layer).digest, f.identity)
    if why:
        report.skipped[row.key] = f"{what}: stale ({why}), nothing to compare with"
        return
    step = block_rows(split.pieces(row.layer)[0], [f])  # a column too large to copy out whole, a block at a time
    fresh = np.concatenate([compute(f, device.host_tensor(values), (len(values), *row.shape[1:]), row.layer, row.split,
                                    "cpu", first=start) for start, values in split.blocks(row.layer, step)])
    stored = store.read_entry(row.key)
    a = device.from_stored(fresh, row.dtype).double().numpy()
    b = device.from_stored(stored, row.dtype).double().numpy()
    scale = max(float(np.abs(b).max()) if b.size else 0.0, 1e-30)
    error = float(np.abs(a - b).max()) / scale if b.size else 0.0
    report.recomputed += 1
    if error > TOLERANCE + 2 * _ROUNDING.get(row.dtype, 0.0):
        report.mismatched[row.key] = (f"{dataset} {row.split}/{row.layer} {row.featurizer}: recomputed differs "
                                      f"by {error:.2e} of max |value| (if its code changed under a pinned "
                                      "version=, bump the version: the next build recomputes it)")
