"""Where the time of a 10%-append rebuild of 1k goes: a timeline of the build's phases per thread,
and how long a thread waits for the GIL meanwhile (a 1 ms sleep's overshoot). A probe for
many-core hosts, where the append rebuild takes far more than 10% of a cold build.

    python benchmarks/probe_append.py [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
from bench_incremental import (  # benchmarks/ is on sys.path: the script's folder
    FEATURIZERS,
    append_rows,
    copy_of_1k,
)

import featstore
from featstore import builder, planning
from featstore.store import Store

EVENTS: list[tuple[str, str, float, float]] = []  # (thread, phase, start, end)
_original_timed = builder.timed


@contextmanager
def _recorded(report, phase):
    start = time.perf_counter()
    with _original_timed(report, phase):
        yield
    EVENTS.append((threading.current_thread().name, phase, start, time.perf_counter()))


def _span(fn, phase):
    def wrapped(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            EVENTS.append((threading.current_thread().name, phase, start, time.perf_counter()))
    return wrapped


def gil_probe(stop: threading.Event, lags: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        time.sleep(0.001)
        lags.append(time.perf_counter() - start - 0.001)


def union(intervals) -> float:
    total, end = 0.0, -1e300
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def summarize(name: str, t0: float, t1: float, lags: list[float]) -> list[str]:
    lines = [f"## {name}: {t1 - t0:.2f} s wall"]
    by_phase = defaultdict(list)
    for thread, phase, a, b in EVENTS:
        by_phase[phase].append((thread, a - t0, b - t0))
    for phase, spans in sorted(by_phase.items(), key=lambda kv: min(s[1] for s in kv[1])):
        durations = np.array([b - a for _, a, b in spans])
        threads = len({t for t, _, _ in spans})
        lines.append(f"  {phase:10} n={len(spans):4} threads={threads:2} summed={durations.sum():6.2f} "
                     f"busy={union([(a, b) for _, a, b in spans]):5.2f} first={min(a for _, a, _ in spans):5.2f} "
                     f"last_end={max(b for _, _, b in spans):5.2f} median={np.median(durations) * 1e3:6.1f} ms "
                     f"p90={np.percentile(durations, 90) * 1e3:6.1f} ms")
    # concurrency per 100 ms bucket: mean number of spans of each phase running
    buckets = np.arange(0, t1 - t0 + 0.1, 0.1)
    lines.append("  t(s)  " + "  ".join(f"{p[:7]:>7}" for p in sorted(by_phase)))
    for lo in buckets:
        hi = lo + 0.1
        row = [sum(max(0.0, min(b, hi) - max(a, lo)) for _, a, b in by_phase[p]) / 0.1 for p in sorted(by_phase)]
        lines.append(f"  {lo:4.1f}  " + "  ".join(f"{v:7.2f}" for v in row))
    lag = np.array(lags) * 1e3
    lines.append(f"  GIL probe (1 ms sleep overshoot): n={len(lag)} median={np.median(lag):.2f} ms "
                 f"p90={np.percentile(lag, 90):.2f} ms p99={np.percentile(lag, 99):.2f} ms max={lag.max():.1f} ms")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--switch", type=float, nargs="*", default=[], help="also run with these GIL switch intervals (s)")
    parser.add_argument("--lanes", type=int, nargs="*", default=[], help="also run with at most these compute lanes")
    parser.add_argument("--writers", type=int, nargs="*", default=[], help="also run with this many writer threads")
    parser.add_argument("--nofsync", action="store_true", help="also run with os.fsync a no-op (is it the disk?)")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    builder.timed = _recorded
    builder._build_unit = _span(builder._build_unit, "unit")
    planning.plan = _span(planning.plan, "plan*")
    Store.read_entry = _span(Store.read_entry, "read_old")
    Store.write_entry = _span(Store.write_entry, "write_entry")
    out: list[str] = [f"probe_append: 1k, {os.cpu_count()} cores, featurizers {FEATURIZERS}"]
    with tempfile.TemporaryDirectory() as tmp:
        data, store = copy_of_1k(Path(tmp)), f"{tmp}/store"
        EVENTS.clear()
        t0 = time.perf_counter()
        featstore.build(str(data), FEATURIZERS, store=store, device="cpu")
        out += summarize("cold", t0, time.perf_counter(), [0.0])
        append_rows(data, 0.10)
        os.sync()
        lanes = builder._cpu_lanes
        variants = [(None, None)] + [(s, None) for s in args.switch] + [(None, n) for n in args.lanes]
        variants += [("nofsync", None)] if args.nofsync else []
        variants += [(f"{n} writers", None) for n in args.writers]
        fsync = os.fsync
        for switch, most in variants:
            builder._cpu_lanes = (lambda plan, most=most: min(most, lanes(plan))) if most else lanes
            os.fsync = (lambda fd: None) if switch == "nofsync" else fsync
            builder.WRITERS = int(switch.split()[0]) if isinstance(switch, str) and switch.endswith("writers") else 0
            for run in range(args.runs):
                copy = tempfile.mkdtemp(dir=tmp) + "/s"
                shutil.copytree(store, copy)
                os.sync()
                if isinstance(switch, float):
                    sys.setswitchinterval(switch)
                EVENTS.clear()
                lags: list[float] = []
                stop = threading.Event()
                probe = threading.Thread(target=gil_probe, args=(stop, lags), daemon=True)
                probe.start()
                t0 = time.perf_counter()
                report = featstore.build(str(data), FEATURIZERS, store=copy, device="cpu")
                t1 = time.perf_counter()
                stop.set()
                probe.join()
                sys.setswitchinterval(0.005)
                assert report.computed == 512
                out += summarize(f"append run {run + 1}" + (f", switch interval {switch * 1e3:g} ms" if isinstance(switch, float)
                                 else f", {switch}" if switch else "")
                                 + (f", at most {most} lanes" if most else ""), t0, t1, lags)
    print("\n".join(out))
    if args.out:
        Path(args.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
