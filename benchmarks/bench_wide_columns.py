"""Peak memory of a cold build whose columns are large: a full-rank matrix per row (a merged
LoRA delta, 1024x1024 float32 = 4 MB), so that one layer column is ~0.8-1.3 GB.

    python benchmarks/bench_wide_columns.py [--rows 300 --dim 1024 --layers 6] [--format arrow|parquet]
                                            [--old DIR] [--rounds 2]

Each build runs in a fresh process (a new store each time) and reports its wall time and peak RSS
(VmHWM); with --old (a checkout, e.g. `git worktree add /tmp/old <commit>`), that version's builds
alternate with this tree's. The dataset is generated once, under $FEATSTORE_HOME/bench/ (or
~/.cache/featstore/bench/): a save_to_disk directory, or with --format parquet, one train.parquet
file written from it by `datasets` (in row groups of 5 rows, 21 MB of a column, by default). Writes
results/wide-columns.txt (wide-columns-parquet.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, re, sys, tempfile, time
import featstore
start = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    report = featstore.build(sys.argv[1], sys.argv[2].split(","), store=tmp, device="cpu", progress=False)
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: after fork+exec, ru_maxrss starts from the parent's RSS
rss = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"seconds": seconds, "peak_rss": rss, "computed": report.computed}))
"""


def make_dataset(path: Path, rows: int, dim: int, layers: int) -> None:
    import datasets

    if (path / "dataset_info.json").exists():
        return
    rng = np.random.default_rng(0)
    features = datasets.Features({**{f"layer_{i}": datasets.Array2D((dim, dim), "float32") for i in range(layers)},
                                  "category_label": datasets.Value("int64")})

    def rows_of():
        for r in range(rows):
            yield {**{f"layer_{i}": rng.standard_normal((dim, dim), dtype=np.float32) for i in range(layers)},
                   "category_label": r % 2}

    with tempfile.TemporaryDirectory() as cache:
        ds = datasets.Dataset.from_generator(rows_of, features=features, cache_dir=cache, writer_batch_size=16)
        ds.save_to_disk(str(path))


def as_parquet(saved: Path) -> Path:
    import datasets

    path = saved.with_name(saved.name + "-parquet")
    if not (path / "train.parquet").exists():
        path.mkdir(parents=True, exist_ok=True)
        datasets.load_from_disk(str(saved)).to_parquet(str(path / "train.tmp"))
        (path / "train.tmp").rename(path / "train.parquet")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--featurizers", default="stats")
    parser.add_argument("--format", choices=["arrow", "parquet"], default="arrow")
    parser.add_argument("--old", default=None, help="a checkout of the version to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    home = Path(os.environ.get("FEATSTORE_HOME", Path.home() / ".cache" / "featstore"))
    data = home / "bench" / f"wide-{args.rows}x{args.dim}x{args.dim}x{args.layers}"
    make_dataset(data, args.rows, args.dim, args.layers)
    if args.format == "parquet":
        data = as_parquet(data)
    column = args.rows * args.dim * args.dim * 4
    trees = {"this tree": str(Path(__file__).resolve().parents[1])}
    if args.old:
        trees["old"] = str(Path(args.old).resolve())
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            path = os.pathsep.join([tree, *filter(None, [os.environ.get("PYTHONPATH")])])  # the tree first
            out = subprocess.run([sys.executable, "-c", CHILD, str(data), args.featurizers], capture_output=True,
                                 text=True, check=True, env={**os.environ, "PYTHONPATH": path}, cwd="/")
            runs[name].append(json.loads(out.stdout.splitlines()[-1]))
            print(f"{name}: {runs[name][-1]}", flush=True)
    title = (f"bench_wide_columns: {args.layers} layer columns of {args.rows} rows of {args.dim}x{args.dim} float32 "
             f"({column / 1e9:.2f} GB a column) in {args.format} files, `{args.featurizers}`, cold CPU builds in fresh processes; "
             f"{os.cpu_count()} cores, {platform.machine()}")
    lines = [title, f"{'tree':<10} {'wall (median)':>14} {'peak RSS (median)':>18} {'peak / one column':>18}"]
    for name, measured in runs.items():
        wall = statistics.median(r["seconds"] for r in measured)
        rss = statistics.median(r["peak_rss"] for r in measured)
        lines.append(f"{name:<10} {wall:>12.2f} s {rss / 2**30:>14.2f} GiB {rss / column:>17.2f}x")
    table = "\n".join(lines)
    print("\n" + table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = "wide-columns.txt" if args.format == "arrow" else f"wide-columns-{args.format}.txt"
    (Path(args.out) / name).write_text(table + "\n")


if __name__ == "__main__":
    main()
