"""Build features: execute a checked plan (`planning.plan`) as a bounded pipeline.

`execute` streams the (split, layer) columns through threads that hash each column
straight from its Arrow buffers (unless the digest cache vouches for it: `digest_cache`) and,
only if the store lacks one of its entries, copy it out (pinned for a GPU); the missing entries
are computed (`compute`: on a GPU by the main thread; on the CPU by compute lanes, a column per
core; `grouping` says what one call covers); writer threads publish them, each atomically; the
dataset's catalog is written last (`commit`), with the columns that finished even when a later one
fails. A few columns are in flight at a time (those read ahead within READ_AHEAD_BYTES; a column
over grouping.BLOCK_BYTES counts as one block of its rows, the most of it copied out at once), so
memory stays bounded by a few columns (or blocks) whatever their size: memory-mapped pages are
released every 64 MB of columns read (split.RELEASE_BYTES), and a blocked column is hashed and
copied out a piece at a time (`Split.pieces`, `Split.blocks`), from parquet files too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor

import numpy as np

from featstore import device as devices
from featstore.columns import join_parts
from featstore.commit import LOCK_TIMEOUT, commit_catalog, commit_finished, entry_info
from featstore.compute import compute
from featstore.digest_cache import cached_digests
from featstore.grouping import (
    Prepared,
    block_rows,
    compute_blocks,
    compute_joined,
    copied,
    copying_out,
    joinable,
    joins,
    on_device,
)
from featstore.interrupts import deferred_ctrl_c, waited
from featstore.keys import column_digests, entry_key
from featstore.manifest import CatalogRow, EntryInfo, now
from featstore.planning import BuildPlan, Unit, extends, why_stale
from featstore.progress import progress_bar
from featstore.report import BuildReport, EntryResult, timed
from featstore.store import Store
from featstore.svdvals import prefetch_triton

log = logging.getLogger(__name__)

PENDING_BYTES = 256 << 20  # features computed but not yet written, at most
# Columns read ahead of the one being computed, at most (but always one): each is a copy in
# memory. Six 1.26 GB columns (300 rows of 1024x1024 float32) were all in memory at once, 7.5 GB,
# when only the count of columns ahead was bounded; the 1k and 10k presets' columns (13 and 131 MB at most)
# stay as many ahead as there are readers.
READ_AHEAD_BYTES = 1 << 30
COMPUTE_BYTES = 1 << 30  # columns (as float32) being computed at once on the CPU, at most
# Writer threads; 0: as many as reader threads. Several writers made a cold 1k `stats` build 1.35x
# faster on 2 cores (small entries are bound by fsync and rename); on an H100 host 1 and 4 writers
# tie within noise (benchmarks/bench_gpu_build.py).
WRITERS = 0


def execute(build_plan: BuildPlan, store: Store, device: str = "auto", progress: bool = False,
            rehash: bool = False, commit: bool = True) -> BuildReport:
    """Compute and publish what the store lacks, then update the dataset's catalog.

    Column digests are cached per split with the (path, inode, size, mtime_ns, ctime_ns) of its
    files and trusted only while every one matches; `rehash` ignores the cache."""
    started = time.perf_counter()
    report = BuildReport(build_plan.source.name, store.location, device)  # resolved once something is computed
    with store.storage.lock("store", shared=True, timeout=LOCK_TIMEOUT), devices.restore_threads():  # no gc meanwhile
        try:
            _execute(build_plan, store, device, progress, rehash, report)
        except BaseException:  # a failure, Ctrl-C: catalogue what finished, so that gc keeps it
            if commit:
                commit_finished(build_plan, store, report)
            raise
        if commit:
            commit_catalog(build_plan, store, report)
    report.seconds["total"] = time.perf_counter() - started + build_plan.seconds
    return report


def _execute(build_plan: BuildPlan, store: Store, device: str, progress: bool, rehash: bool,
             report: BuildReport) -> None:
    """Fill `report` as columns finish: its rows are those of every column done, even when a
    later one fails."""
    source = build_plan.source
    report.seconds["plan"] = build_plan.seconds
    # the files' stats, taken before any column is read
    report.cache = build_plan.cache if build_plan.cache is not None else cached_digests(store, source, rehash)
    trusted = report.cache[2]
    previous = store.read_catalog(source.name)
    before = {r.slot: r for r in previous.rows} if previous else {}
    created = {r.key: r.created for r in previous.rows} if previous else {}
    rows, seen = report.rows, report.seen  # seen: (split, layer) -> input digest
    # Hashing and copying run mostly outside the GIL (xxhash, page faults, memcpy): a thread per
    # core, but no more than 4, since every reader also needs the GIL that the compute thread uses
    # to launch kernels; 4 keep well ahead of an H100 (benchmarks/bench_gpu_build.py).
    workers = min(os.cpu_count() or 1, 4)
    bar = progress_bar(len(build_plan.units), f"build {source.name}", "column", progress)
    writing_at_once = WRITERS or workers
    with deferred_ctrl_c("finishing the columns in flight, then stopping") as interrupted, \
            ThreadPoolExecutor(workers, "featstore-read") as readers, \
            ThreadPoolExecutor(writing_at_once, "featstore-write") as writers, \
            ThreadPoolExecutor(devices.cpu_count(), "featstore-compute") as computers:  # threads start on use
        pools = (readers, computers, writers)  # a second Ctrl-C in a script stops what they have queued
        prepared: deque = deque()  # (unit, the future of its Prepared, bytes it may copy), in build order
        upcoming = deque(build_plan.units)

        def read_ahead() -> None:
            """Start reading the next columns: as many as there are readers, and one more, within
            READ_AHEAD_BYTES (but always one)."""
            while upcoming and len(prepared) <= workers and (
                    not prepared or sum(p[2] for p in prepared) + copied(upcoming[0].layout, build_plan.featurizers)
                    <= READ_AHEAD_BYTES):
                unit = upcoming.popleft()
                known = trusted.get(unit.split, {}).get(unit.layer)
                extends = _extendable(build_plan, unit, before)
                keys = {f.spec: entry_key(known, f.identity) for f in build_plan.featurizers} if known else {}
                if keys and not extends and all(map(store.has_entry, keys.values())):  # nothing to read
                    done: Future = Future()
                    done.set_result(Prepared(unit, known, keys, set()))
                    prepared.append((unit, done, 0))
                else:
                    prepared.append((unit, readers.submit(_prepare, build_plan, unit, store, report, device, known,
                                                          extends), copied(unit.layout, build_plan.featurizers)))

        writes: deque = deque()
        writing = threading.Lock()  # compute lanes write too
        counts: Counter = Counter()  # entries finished, by status

        def write(info: EntryInfo, out: np.ndarray) -> None:
            # Small entries are bound by per-entry costs (fsync, rename), so several are written at
            # once; waiting ones are capped in count and bytes.
            with writing:
                while len(writes) >= 2 * writing_at_once or (writes and sum(o.nbytes for _, o in writes) > PENDING_BYTES):
                    report.bytes_written += writes.popleft()[0].result()
                writes.append((writers.submit(_write_entry, store, info, out, report), out))

        def finish(built: Future) -> None:
            entries, unit_rows = built.result()
            report.entries.extend(entries)
            rows.extend(unit_rows)
            counts.update(e.status for e in entries)  # not report.computed: a sum over every entry so far
            if not bar.disable:
                bar.set_postfix(computed=counts["computed"], reused=counts["reused"], refresh=False)
            bar.update()

        def settle(running_limit: int) -> None:
            """Finish the columns done at the head of the queue, in build order; while
            `running_limit` or more still compute, wait for any of them (not the oldest: a 200-row
            column must not wait behind an 800-row one). Once a column fails, the columns before
            it finish and the first failure in build order raises: the error a one-column-at-a-time
            build would give."""
            while True:
                while computing and computing[0].done():
                    finish(computing.popleft())
                failed = [i for i, built in enumerate(computing) if built.done() and built.exception()]
                if failed:
                    waited(list(computing)[: failed[0]], interrupted, pools=pools)
                    while not computing[0].exception():  # the columns before it: done, catalogued
                        finish(computing.popleft())
                    computing[0].result()
                running = [built for built in computing if not built.done()]
                if len(running) < running_limit:
                    return
                waited(running, interrupted, FIRST_COMPLETED, pools)

        def take() -> Prepared:
            read = prepared.popleft()[1]  # its bytes: the compute's now (bounded by the lanes)
            waited([read], interrupted, pools=pools)
            ready = read.result()
            seen[(ready.unit.split, ready.unit.layer)] = ready.digest
            if ready.segments:
                report.segments[(ready.unit.split, ready.unit.layer)] = ready.segments
            read_ahead()
            return ready

        read_ahead()
        lanes, computing = 0, deque()  # columns computed at once; those in flight, in build order
        while prepared and not interrupted:
            ready = take()
            if ready.missing and not lanes:  # the first column to compute: now the device matters
                report.device = devices.resolve(device)
                lanes = 1
                if report.device == "cpu":  # columns side by side, one core each; or one column, every core
                    lanes = _cpu_lanes(build_plan)
                    devices.intra_op_threads(1 if lanes > 1 else devices.cpu_count())
            group = [ready]
            while lanes == 1 and joins(report.device) and prepared and joinable(build_plan, group, *prepared[0][:2]):
                group.append(take())
            settle(max(lanes, 1))
            joined = compute_joined(build_plan, group, report) if len(group) > 1 else [{}]
            for ready, outs in zip(group, joined):
                args = (build_plan, ready, store, report, created, before, write, outs)
                if lanes > 1 and ready.missing:
                    built = computers.submit(_build_unit, *args)
                else:  # on a GPU, the main thread computes (and queues kernels) while readers read: two or three
                    # compute threads, each on its own CUDA stream, were slower (GIL-bound; cold 1k svd on the H200
                    # host, medians of 4 alternating: 1.045 and 1.040 s against 0.910 s; a probe, not kept)
                    built = Future()
                    built.set_result(_build_unit(*args))
                computing.append(built)
        for _, read, _ in prepared:  # left by Ctrl-C
            read.cancel()
        settle(1)
        while writes:
            report.bytes_written += writes.popleft()[0].result()
    bar.close()
    if interrupted:  # every column begun is finished, written and (by `execute`) catalogued
        raise KeyboardInterrupt


def _extendable(build_plan: BuildPlan, unit: Unit, before: dict) -> dict[str, CatalogRow]:
    """The catalogued entries of `unit` that its column might extend (see `extends`)."""
    olds = {f.spec: (before.get((unit.split, unit.layer, f.spec)), f) for f in build_plan.featurizers}
    return {spec: old for spec, (old, f) in olds.items() if extends(old, f, unit.layout.rows)}


def _prepare(build_plan: BuildPlan, unit: Unit, store: Store, report: BuildReport, device: str,
             known_digest: str | None, extendable: dict[str, CatalogRow]) -> Prepared:
    """Hash the column from its Arrow buffers (unless the digest cache vouches for it), with the
    digests of the prefixes that `extendable` entries were computed from and of each data file's
    rows, in the same pass; copy it out only if an entry is missing, and only its new rows if
    every missing entry extends an old one. Runs in a reader thread."""
    split = build_plan.source.splits[unit.split]
    layout, parts, hashed = unit.layout, None, None
    step = block_rows(layout, build_plan.featurizers)  # fewer than its rows: copied out a block at a time
    if known_digest is None or extendable:
        hashed = None if extendable else split.checked_digests(unit.layer)  # parquet: hashed as planned
        if hashed is None:
            with timed(report, "hash"), copying_out(build_plan, unit, layout, layout.rows):  # parquet: decoded
                if step < layout.rows:  # a piece at a time, each let go of: no pass holds all of it
                    layout, pieces = split.pieces(unit.layer)
                else:
                    layout, parts = split.parts(unit.layer)
                    pieces = parts
                hashed = column_digests(pieces, layout.dtype, (layout.rows, *layout.value_shape),
                                        {old.shape[0] for old in extendable.values()}, split.file_rows or ())
        known_digest = hashed.digest
    keys = {f.spec: entry_key(known_digest, f.identity) for f in build_plan.featurizers}
    ready = Prepared(unit, known_digest, keys, {spec for spec, key in keys.items() if not store.has_entry(key)})
    prefixes = hashed.prefixes if hashed else {}
    ready.segments = hashed.segments if hashed and hashed.segments else None
    ready.appends = {spec: old for spec, old in extendable.items() if spec in ready.missing
                     and prefixes.get(old.shape[0]) == old.input_digest and store.has_entry(old.key)}
    if ready.missing:
        if set(ready.appends) == ready.missing:
            ready.offset = min(old.shape[0] for old in ready.appends.values())
        if device != "cpu":  # overlaps the Triton kernel's first-launch costs with importing torch
            prefetch_triton()
        target = devices.resolve(device)  # the first call imports torch: not part of reading
        if step < layout.rows:  # read when computed (`compute_blocks`)
            ready.column = layout, split.blocks(unit.layer, step, ready.offset)
        else:
            with timed(report, "read"), copying_out(build_plan, unit, layout, layout.rows - ready.offset):
                layout, parts = (layout, parts) if parts is not None else split.parts(unit.layer)
                ready.host = devices.host_tensor(join_parts(layout, parts, ready.offset), target)
    if parts is not None or step < layout.rows:  # a column in blocks: every mapped page, once hashed
        split.release(parts)
    return ready


def _write_entry(store: Store, info: EntryInfo, out: np.ndarray, report: BuildReport) -> int:
    with timed(report, "write"):
        return out.nbytes if store.write_entry(info, out) else 0


def _cpu_lanes(build_plan: BuildPlan) -> int:
    """How many columns a CPU build computes at once: one per core (as many as fit in
    COMPUTE_BYTES, counting each as float32 at least; a single lane gets torch's intra-op threads
    on every core instead: torch's thread count is one setting for the whole process, so lanes
    cannot share spare cores out among themselves). Columns side by side, torch single-threaded
    in each, beat torch's intra-op threads on one column at a time for every featurizer measured:
    on 16 cores, 80 columns of 1k, `randproj:dim=1024` (matmul-heavy) 0.64 s against 2.22 s,
    `stats` 0.32 against 0.78, `svd` 0.85 against 1.09 (benchmarks/bench_cpu_build.py)."""
    column = max(copied(u.layout, build_plan.featurizers) * max(4, u.layout.dtype.itemsize) // u.layout.dtype.itemsize
                 for u in build_plan.units)
    return max(1, min(devices.cpu_count(), COMPUTE_BYTES // max(column, 1)))


def _build_unit(build_plan: BuildPlan, ready: Prepared, store: Store, report: BuildReport, created: dict,
                before: dict, write, joined: dict[str, np.ndarray]) -> tuple[list[EntryResult], list[CatalogRow]]:
    """Compute and write what `ready` lacks (in a compute lane on the CPU), or take it from `joined`
    (`compute_joined`); its entries and catalog rows."""
    unit, tensor, entries, rows = ready.unit, None, [], []
    if ready.column is not None:
        joined = compute_blocks(build_plan, ready, report)
    for f in build_plan.featurizers:
        key = ready.keys[f.spec]
        shape = (unit.layout.rows, *f.output_shape(unit.layout.value_shape))
        status, reason = "reused", ""
        if f.spec in ready.missing and not store.has_entry(key):  # another build may have made it since
            old = before.get((unit.split, unit.layer, f.spec))
            reason = "new" if old is None else why_stale(old, ready.digest, f.identity) or "removed from the store"
            extended = ready.appends.get(f.spec)
            start = extended.shape[0] if extended else 0  # rows already computed
            out = joined.get(f.spec)
            if out is None:
                if tensor is None:
                    tensor = on_device(ready.host, unit, report.device)
                with timed(report, "compute"):
                    out = compute(f, tensor[start - ready.offset :], shape, unit.layer, unit.split, report.device,
                                  first=start)
            if extended:
                out = np.concatenate([store.read_entry(extended.key, known=extended), out])
                reason = f"{unit.layout.rows - start} rows appended to {start}"
            created[key] = now()
            write(entry_info(key, ready.digest, f.identity, out, created[key], report.device, f.dtype), out)
            status = "computed"
        elif key not in created:  # an entry first made for another dataset
            created[key] = store.entry_info(key).created
        entries.append(EntryResult(unit.split, unit.layer, f.spec, key, status, reason))
        nbytes = int(np.prod(shape)) * (4 if f.dtype == "float32" else 2)
        old = before.get((unit.split, unit.layer, f.spec))
        reused = status == "reused" and old is not None and old.key == key
        layout = (old.chunk_rows, old.chunks) if reused else (0, {})  # else read at commit
        rows.append(CatalogRow(unit.split, unit.layer, f.spec, key, shape, f.dtype, nbytes, created[key],
                               ready.digest, f.identity, *layout))
    return entries, rows
