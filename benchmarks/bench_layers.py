"""Does each command's cost grow with the number of layers, and no faster? Datasets of 100 and
1,000 layer columns (200 rows of 8x8 float32, `stats` + `svd`), timed per layer in one process:

    python benchmarks/bench_layers.py [--out benchmarks/results] [--label NAME]

A model's LoRA adapter has hundreds of columns (32 layers x 7 projections x A and B: 448), so the
1k preset's 128 says little about this. Each case runs 3 times (median); the last column is the
per-layer cost at 1,000 layers over that at 100: about 1 where a command scales linearly, about
10 where it does something per layer for every layer. Prints the table and appends it to
benchmarks/results/layers.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np

import featstore

ROWS, SHAPE, FEATURIZERS, RUNS = 200, (8, 8), ["stats", "svd"], 3


def make_dataset(path: Path, layers: int) -> str:
    rng = np.random.default_rng(layers)
    names = [f"model.layers.{i // 8}.proj_{i % 8}" for i in range(layers)]
    features = datasets.Features({**{n: datasets.Array2D(SHAPE, "float32") for n in names},
                                  "category_label": datasets.ClassLabel(num_classes=4)})
    data = {n: rng.standard_normal((ROWS, *SHAPE), dtype=np.float32) for n in names}
    data["category_label"] = np.arange(ROWS) % 4
    datasets.Dataset.from_dict(data, features=features).train_test_split(0.2, seed=0).save_to_disk(str(path))
    return str(path)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cases(dataset: str, root: Path) -> dict[str, float]:
    """Median seconds of each case on `dataset`, the cold build on a new store each run."""
    store = str(root / "store")
    times: dict[str, list[float]] = {}
    times["cold build"] = [timed(lambda run=run: featstore.build(dataset, FEATURIZERS, store=str(root / f"cold{run}"),
                                                                progress=False)) for run in range(RUNS)]
    featstore.build(dataset, FEATURIZERS, store=store, progress=False)
    steps = {
        "no-op build": lambda: featstore.build(dataset, FEATURIZERS, store=store, progress=False),
        "status": lambda: featstore.status(dataset, store=store, progress=False),
        "open(require_fresh=True)": lambda: featstore.open(dataset, store, require_fresh=True).close(),
        "load_many('*', stack=True)": lambda: featstore.open(dataset, store).load_many("*", "svd", stack=True),
    }
    for name, step in steps.items():
        times[name] = [timed(step) for _ in range(RUNS)]
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--label", default="", help="what this run measures (e.g. the commit), for the results file")
    args = parser.parse_args()
    counts = (100, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for n in counts:
            root = Path(tmp) / str(n)
            results[n] = cases(make_dataset(root / "data", n), root)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                            cwd=Path(__file__).parent).stdout.strip()
    lines = [f"bench_layers: {ROWS} rows of {SHAPE[0]}x{SHAPE[1]} float32, {' + '.join(FEATURIZERS)}, 2 splits; "
             f"{platform.machine()}, {os.cpu_count()} cores, featstore {commit} {args.label}".rstrip(),
             "", f"{'case':28} {'ms/layer @100':>14} {'ms/layer @1000':>15} {'ratio':>7}"]
    for name in results[counts[0]]:
        small, large = (results[n][name] / n * 1e3 for n in counts)
        lines.append(f"{name:28} {small:14.3f} {large:15.3f} {large / small:6.2f}x")
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "layers.txt"), "a") as f:
        f.write(text + "\n\n")


if __name__ == "__main__":
    main()
