"""Loading features from the store vs `np.load` of the same bytes, 1k preset, all 128 layers.

    python benchmarks/bench_load.py [--out benchmarks/results]

Builds `raw` and `svd` for the train split into a temporary store, writes every layer's `raw`
features to .npy files as the baseline, then times (median of 5, alternating, page cache warm):
np.load of the 128 files; `fs.load(layer, "raw")` for the 128 layers; `fs.load_many(...,
stack=True)`; `fs.load(layer, "svd")` for all layers; and, where torch sees a GPU, `fs.load(...,
device="cuda")`. Prints the table and writes benchmarks/results/load-<device>.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import featstore
from featstore import presets

REPEAT = 5


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if not (presets.default_dir("1k") / "dataset_dict.json").exists():
        presets.make("1k", presets.default_dir("1k"))
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        featstore.build("1k", ["raw", "svd"], store=f"{tmp}/store", device="cpu")
        fs = featstore.open("1k", store=f"{tmp}/store")
        layers = fs.layers
        files = []
        for layer in layers:
            files.append(f"{tmp}/{layer}.npy")
            np.save(files[-1], fs.load(layer, "raw").numpy())
        nbytes = sum(os.path.getsize(f) for f in files)
        cases = {
            "np.load of the same bytes (.npy)": lambda: [np.load(f) for f in files],
            "fs.load(layer, 'raw'), each layer": lambda: [fs.load(layer, "raw") for layer in layers],
            "fs.load_many(layers, 'raw', stack=True)": lambda: fs.load_many(layers, "raw", stack=True),
            "fs.load(layer, 'svd'), each layer": lambda: [fs.load(layer, "svd") for layer in layers],
        }
        if gpu:
            cases["fs.load(layer, 'raw', device='cuda')"] = lambda: [fs.load(layer, "raw", device="cuda")
                                                                     for layer in layers]
        for fn in cases.values():  # warm the page cache and the code paths
            fn()
        times = {name: [] for name in cases}
        for _ in range(REPEAT):
            for name, fn in cases.items():
                times[name].append(timed(fn))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["np.load of the same bytes (.npy)"]
    where = torch.cuda.get_device_name() if gpu else f"{os.cpu_count()} CPU cores, no GPU"
    lines = [(f"bench_load: 1k preset, train split, all {len(layers)} layers ({nbytes / 2**20:,.0f} MiB of raw); "
             f"{platform.machine()}, {where}; median of {REPEAT}"), "",
             f"{'case':44} {'ms':>9} {'throughput vs np.load':>22}"]
    for name, t in medians.items():
        ratio = f"{base / t:.2f}x" if "raw" in name or "np.load" in name else ""
        lines.append(f"{name:44} {t * 1e3:9.1f} {ratio:>22}")
    lines += ["", "bars: raw >= 0.5x np.load throughput; svd of all layers < 200 ms"]
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"load-{'cuda' if gpu else 'cpu'}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
