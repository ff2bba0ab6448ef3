"""Core benchmark on the 1k preset: column reads, cold vs no-op build, loading, peak RSS.

    python benchmarks/bench_core.py [--dataset 1k] [--out benchmarks/results]

Every comparison is measured side by side in this one run (the machine is shared and noisy:
medians and ratios). Builds run in fresh child processes so their peak RSS is their own.
Prints one table and writes it, with the raw numbers as JSON, to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import featstore
from featstore import presets, read_column

BUILD_CHILD = r"""
import json, re, sys, time, featstore
dataset, store = sys.argv[1], sys.argv[2]
t = time.perf_counter(); cold = featstore.build(dataset, ["raw", "svd"], store=store); cold_s = time.perf_counter() - t
# VmHWM, not ru_maxrss: after fork+exec, ru_maxrss starts from the parent's RSS (Linux keeps the max).
rss = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
t = time.perf_counter(); warm = featstore.build(dataset, ["raw", "svd"], store=store); warm_s = time.perf_counter() - t
t = time.perf_counter(); featstore.build(dataset, ["raw", "svd"], store=store, rehash=True); rehash_s = time.perf_counter() - t
print(json.dumps({"cold_s": cold_s, "warm_s": warm_s, "rehash_s": rehash_s, "peak_rss": rss, "cold_computed": cold.computed,
                  "warm_reused": warm.reused, "warm_computed": warm.computed, "cold_phases": cold.seconds}))
"""
NOOP_CHILD = r"""
import json, sys, time
t = time.perf_counter(); import featstore; imported = time.perf_counter() - t
t = time.perf_counter(); r = featstore.build(sys.argv[1], ["raw", "svd"], store=sys.argv[2]); s = time.perf_counter() - t
print(json.dumps({"noop_s": s, "import_s": imported, "computed": r.computed}))
"""


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def arrow_floor(ds, name: str) -> np.ndarray:
    """The floor: copy the column's leaf value buffers into one array (what any reader must do)."""
    column = ds.data.table.column(name)
    column = column.cast(column.type.storage_type)
    leaves = [chunk.values.values for chunk in column.chunks]
    out = np.empty(sum(len(v) for v in leaves), dtype=np.float32)
    start = 0
    for v in leaves:
        out[start : start + len(v)] = np.frombuffer(v.buffers()[1], np.float32, len(v), v.offset)
        start += len(v)
    return out


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")),
                 platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, {platform.system()} {platform.machine()}, no GPU"


def run_child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="1k")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--sample-rows", type=int, default=8, help="rows timed for per-sample access")
    args = parser.parse_args()
    import torch

    path = presets.ensure(args.dataset, progress=True)
    import datasets

    ds = datasets.load_from_disk(str(path))["train"]  # memory-mapped, as users load it
    layers = [c for c in ds.column_names if c.startswith("layer_")]
    n = len(ds)
    dataset_bytes = sum(f.stat().st_size for f in Path(path).rglob("*.arrow"))
    results: dict = {"machine": machine(), "dataset": args.dataset, "rows_train": n, "layers": len(layers),
                     "dataset_bytes": dataset_bytes, "torch": torch.__version__}

    # 1. One layer column, four ways (train split). Warm the page cache first.
    for name in layers:
        arrow_floor(ds, name)
    probe = layers[17]
    per_row = median_time(lambda: [ds[i][probe] for i in range(args.sample_rows)], 3) / args.sample_rows
    results["per_sample_s"] = per_row * n
    results["torch_tensor_s"] = median_time(lambda: torch.tensor(ds[probe]), 3)
    results["floor_s"] = statistics.median(median_time(lambda c=c: arrow_floor(ds, c), 5) for c in layers)
    results["read_column_s"] = statistics.median(median_time(lambda c=c: read_column(ds, c), 5) for c in layers)
    assert np.array_equal(read_column(ds, probe).reshape(-1), arrow_floor(ds, probe))

    # 2. Cold and no-op builds of raw + svd for every layer, in fresh processes.
    work = Path(tempfile.mkdtemp(prefix="featstore-bench-"))
    store = str(work / "store")
    try:
        build = run_child(BUILD_CHILD, args.dataset, store)
        noop = run_child(NOOP_CHILD, args.dataset, store)
        results.update(build)
        results["noop_fresh_s"], results["import_s"] = noop["noop_s"], noop["import_s"]
        assert build["warm_computed"] == 0 and noop["computed"] == 0

        # 3. Loading every layer's raw features vs np.load of the same bytes from .npy files.
        fs = featstore.open(args.dataset, store=store)
        npy = work / "npy"
        npy.mkdir()
        for layer in layers:
            np.save(npy / f"{layer}.npy", fs.load(layer, "raw").numpy())
        load_all = lambda: [fs.load(layer, "raw") for layer in layers]
        np_all = lambda: [np.load(npy / f"{layer}.npy") for layer in layers]
        load_all(), np_all()
        results["load_raw_s"] = median_time(load_all, 5)
        results["np_load_s"] = median_time(np_all, 5)
        results["load_svd_s"] = median_time(lambda: [fs.load(layer, "svd") for layer in layers], 5)
        results["raw_bytes"] = sum(fs.row(layer, "raw").nbytes for layer in layers)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = render(results)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "core.txt").write_text(table + "\n")
    (out / "core.json").write_text(json.dumps(results, indent=1) + "\n")


def render(r: dict) -> str:
    ms = lambda s: f"{s * 1e3:,.1f} ms"
    rows = [
        ("per-layer column read (train split, 800 rows of 64x64 float32)", "", "", ""),
        ("  per-sample ds[i][layer], extrapolated", ms(r["per_sample_s"]), f"{r['per_sample_s'] / r['read_column_s']:,.0f}x slower", ""),
        ("  torch.tensor(ds[layer])", ms(r["torch_tensor_s"]), f"{r['torch_tensor_s'] / r['read_column_s']:,.0f}x slower", ">= 100x"),
        ("  Arrow buffer floor (memcpy of the buffers)", ms(r["floor_s"]), "1.00x", ""),
        ("  featstore.read_column", ms(r["read_column_s"]), f"{r['read_column_s'] / r['floor_s']:.2f}x floor", "<= 2x"),
        ("build raw+svd, 128 layers x 2 splits", "", "", ""),
        ("  cold build", f"{r['cold_s']:.1f} s", "1.00x", ""),
        ("  no-op rebuild (same process)", f"{r['warm_s']:.2f} s", f"{r['warm_s'] / r['cold_s']:.1%} of cold", "<= 2%"),
        ("  no-op rebuild --rehash (hashes all 2 GB)", f"{r['rehash_s']:.2f} s", f"{r['rehash_s'] / r['cold_s']:.1%} of cold", ""),
        ("  no-op rebuild (fresh process, excl. imports)", f"{r['noop_fresh_s']:.2f} s", f"{r['noop_fresh_s'] / r['cold_s']:.1%} of cold", ""),
        ("  peak RSS of the cold build", f"{r['peak_rss'] / 2**20:,.0f} MiB",
         f"dataset {r['dataset_bytes'] / 2**30:.1f} GiB", "< 1 GB"),
        (f"load all 128 layers, train split ({r['raw_bytes'] / 2**20:,.0f} MiB of raw)", "", "", ""),
        ("  np.load of the same bytes (.npy)", ms(r["np_load_s"]), "1.00x", ""),
        ("  fs.load(layer, 'raw')", ms(r["load_raw_s"]), f"{r['np_load_s'] / r['load_raw_s']:.2f}x np.load throughput", ""),
        ("  fs.load(layer, 'svd')", ms(r["load_svd_s"]), "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    head = ("measure", "time", "ratio", "bar")
    widths = [max(w, len(h)) for w, h in zip(widths, head)]
    line = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([f"featstore bench_core on {r['dataset']}: {r['machine']}, torch {r['torch']}",
                      line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])


if __name__ == "__main__":
    main()
