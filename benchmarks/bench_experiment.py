"""The layer-ablation experiment's timeline: first and second run of 8 reps x 2 configs on 1k.

    python benchmarks/bench_experiment.py [--device auto] [--num-runs 8] [--out benchmarks/results]

Runs examples/layer_ablation.py twice as a user would (subprocesses, a fresh store), then prints
each run's timeline from its results.json (featstore build: hashing + reading the columns and
computing features; loading features from the store; training; total; featstore's share) next
to the original's figures. Writes benchmarks/results/experiment-<device>.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent
ORIGINAL = [  # the problem statement's figures for 1k, 128 layers
    "original, per-sample loading: ~3 min per layer (6.4 h for 128 layers), features ~2 h per run, every run",
    "original, torch.tensor(ds[layer]): ~1 s per layer (~2 min for 128 layers), features ~2 h per run, every run",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-runs", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    lines = [(f"bench_experiment: examples/layer_ablation.py --dataset 1k --num-runs {args.num_runs} --configs svd stats "
             f"--device {device}; {platform.machine()}, {where}"), "",
             (f"{'run':8} {'build s':>8} {'(hash+read':>11} {'compute)':>9} {'load s':>7} {'train s':>8} {'total s':>8} "
             f"{'featstore':>10} {'computed':>9}")]
    with tempfile.TemporaryDirectory() as tmp:
        for run in ("first", "second"):
            command = [sys.executable, str(HERE.parent / "examples" / "layer_ablation.py"), "--dataset", "1k",
                       "--num-runs", str(args.num_runs), "--configs", "svd", "stats", "--output-dir", f"{tmp}/out",
                       "--store", f"{tmp}/store", "--device", device]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"{run} run failed:\n{done.stderr}")
            print(done.stderr, file=sys.stderr, end="")
            results = json.loads(Path(f"{tmp}/out/results.json").read_text())
            t = results["timeline"]
            lines.append(f"{run:8} {t['featstore_build']:8.2f} {t['build_hash_and_read']:11.2f} {t['build_compute']:9.2f} "
                         f"{t['load_from_store']:7.2f} {t['training']:8.2f} {t['total']:8.2f} "
                         f"{t['featstore_share']:9.1%} {results['features']['computed']:9d}")
    lines += ["", "build phases are summed over threads (they overlap); featstore = build + load, as a share of total",
              "bar: the second run spends < 1% of its time in featstore", "", *ORIGINAL]
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"experiment-{device.split(':')[0]}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
