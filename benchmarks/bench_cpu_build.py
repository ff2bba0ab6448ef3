"""Cold CPU builds of the 1k preset, per featurizer: how a CPU build spends the cores.

    python benchmarks/bench_cpu_build.py [--layers 'layer_0[0-3]*'] [--repeat 3] [--out benchmarks/results]

Three ways to compute the same features, side by side in one process, medians of --repeat:
- lanes: `featstore.build` as it is, columns computed side by side, one core each;
- intra-op: `featstore.build` with one column at a time and torch's intra-op threads on every core
  (what a build does when columns are too large to compute side by side: builder.COMPUTE_BYTES);
- plain loop: each column read with `read_column` and the same featurizer called on it, column by
  column, with torch's default threads (what a user's own loop does; nothing hashed or written).
`randproj:dim=1024` stands for a user's matmul-heavy featurizer. Prints the table and writes it
to --out/cpu-build-<cores>cores.txt.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import featstore
from featstore import builder
from featstore.device import cpu_count
from featstore.featurizers import parse_spec
from featstore.sources import load_source

FEATURIZERS = ("stats", "svd", "norms", "randproj:dim=1024")


def build(spec: str, layers: str, one_column_at_a_time: bool) -> float:
    saved = getattr(builder, "COMPUTE_BYTES", 1 << 30)  # absent before compute lanes: then both ways are alike
    builder.COMPUTE_BYTES = 1 if one_column_at_a_time else saved
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            featstore.build("1k", [spec], store=f"{tmp}/s", device="cpu", layers=layers)
            return time.perf_counter() - start
    finally:
        builder.COMPUTE_BYTES = saved


def plain_loop(spec: str, layers: str) -> float:
    source, f = load_source("1k", [layers]), parse_spec(spec)
    start = time.perf_counter()
    for split in source.splits.values():
        for layer in source.layers:
            f(torch.from_numpy(np.array(split.read(layer))))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="layer_*", help="glob of the layers to build [default: all 128]")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    columns = 2 * len(load_source("1k", [args.layers]).layers)
    title = (f"bench_cpu_build: 1k preset, {columns} columns ({args.layers!r}), cold CPU builds; "
             f"{cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads by default")
    header = (f"{'featurizer':<20} {'lanes s':>8} {'intra-op s':>11} {'plain loop s':>13} "
              f"{'intra-op / lanes':>17} {'plain / lanes':>14}")
    lines = [title, "", header]
    print(lines[0])
    build("stats", args.layers, False)  # warm-up: page cache, imports
    for spec in FEATURIZERS:
        times = {"lanes": [], "intra": [], "plain": []}
        for _ in range(args.repeat):  # interleaved, so a noisy neighbour hits each way alike
            times["lanes"].append(build(spec, args.layers, False))
            times["intra"].append(build(spec, args.layers, True))
            times["plain"].append(plain_loop(spec, args.layers))
        m = {k: statistics.median(v) for k, v in times.items()}
        lines.append(f"{spec:<20} {m['lanes']:>8.2f} {m['intra']:>11.2f} {m['plain']:>13.2f} "
                     f"{m['intra'] / m['lanes']:>16.2f}x {m['plain'] / m['lanes']:>13.2f}x")
        print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cpu-build-{cpu_count()}cores.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
