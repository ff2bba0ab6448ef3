"""What a build did: the entries it computed or reused (and why), the bytes it wrote, and the
seconds each phase took (summed over the threads that ran it)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from featstore.manifest import CatalogRow

PHASES = ("plan", "hash", "read", "compute", "write")  # seconds per phase, summed over threads


@dataclass(frozen=True)
class EntryResult:
    split: str
    layer: str
    featurizer: str
    key: str
    status: str  # "computed" | "reused"
    reason: str = ""  # why it was computed: why_stale, "new", "removed from the store" (by gc or verify --repair)


@dataclass
class BuildReport:
    dataset: str
    store: str
    device: str
    entries: list[EntryResult] = field(default_factory=list)
    bytes_written: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*PHASES, "total"), 0.0))
    rows: list[CatalogRow] = field(default_factory=list, repr=False)  # what `commit` catalogues
    seen: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)  # (split, layer) -> digest
    segments: dict[tuple[str, str], list[str]] = field(default_factory=dict, repr=False)  # ... -> per file
    cache: tuple = field(default=((), {}, {}), repr=False)  # cached_digests() when the build began
    worker_peak_rss: dict[str, int] = field(default_factory=dict)  # Dask worker -> peak RSS, bytes
    worker_devices: dict[str, str] = field(default_factory=dict)  # Dask worker -> its device (--devices)
    dropped: list[tuple[str, str, str]] = field(default_factory=list)  # catalogued slots whose column is gone
    labels: list[str] = field(default_factory=list)  # splits whose labels this build catalogued anew

    def __repr__(self) -> str:  # a notebook shows this, not every entry
        where = f" on {self.device}" if self.computed else ""  # a no-op resolves no device
        return (f"BuildReport({self.dataset!r}{where}: {self.computed} computed, {self.reused} reused, "
                f"{self.bytes_written} bytes written in {self.seconds['total']:.2f} s)")

    @property
    def computed(self) -> int:
        return sum(e.status == "computed" for e in self.entries)

    @property
    def reused(self) -> int:
        return sum(e.status == "reused" for e in self.entries)

    @property
    def reasons(self) -> Counter:
        """How many entries were computed for each reason."""
        return Counter(e.reason for e in self.entries if e.status == "computed")

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "store": self.store,
            "device": self.device if self.computed else None,  # as the repr: a no-op resolves no device
            "computed": self.computed,
            "reused": self.reused,
            "reasons": dict(self.reasons),
            "bytes_written": self.bytes_written,
            "dropped": [list(slot) for slot in self.dropped],
            "labels": self.labels,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "entries": [asdict(e) for e in self.entries],
        }


_timing_lock = threading.Lock()


@contextmanager
def timed(report: BuildReport, phase: str):
    """Add the block's seconds to `report.seconds[phase]` (from any thread)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        with _timing_lock:
            report.seconds[phase] += time.perf_counter() - start
