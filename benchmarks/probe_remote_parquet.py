"""Reading a parquet dataset from object storage: every layer column checked (`layout`) and read
(`parts`) through s3fs from a local S3 server (moto's), by this tree and by an older checkout,
alternating in fresh processes. Wall time and peak RSS, medians, and the runs that failed.

    git worktree add /tmp/old <commit>
    python benchmarks/probe_remote_parquet.py --old /tmp/old [--rows 800 --layers 8 --rounds 3]

The dataset (rows of 64x64 float32 per layer, as the 1k preset's) is written by `datasets` into
one parquet file, in a temporary folder. Needs moto and s3fs (the test extra). Prints the table
and writes results/remote-parquet.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import re, time
from featstore.sources import load_source
start = time.perf_counter()
split = load_source("s3://bench/d").splits["train"]
for column in split.column_names:
    split.layout(column)
    split.parts(column)
# VmHWM, not ru_maxrss: after fork+exec, ru_maxrss starts from the parent's RSS (the server's here)
rss = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) << 10
print(time.perf_counter() - start, rss)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="a checkout of the version to compare with")
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    import datasets
    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    rng = np.random.default_rng(0)
    features = datasets.Features({f"layer_{i}": datasets.Array2D((64, 64), "float32") for i in range(args.layers)})
    ds = datasets.Dataset.from_dict({name: rng.standard_normal((args.rows, 64, 64), dtype=np.float32)
                                     for name in features}, features=features)
    with tempfile.TemporaryDirectory() as tmp:
        ds.to_parquet(f"{tmp}/train.parquet")
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="x", secret="x")
        fs.mkdir("bench")
        fs.put(f"{tmp}/train.parquet", "bench/d/train.parquet")
    trees = {"this tree": str(Path(__file__).resolve().parents[1]), "old": str(Path(args.old).resolve())}
    runs: dict[str, list[list[float]]] = {name: [] for name in trees}
    failed: dict[str, list[str]] = {name: [] for name in trees}
    try:
        for _ in range(args.rounds):
            for name, tree in trees.items():
                out = subprocess.run([sys.executable, "-c", CHILD], env={**env, "PYTHONPATH": tree}, cwd="/",
                                     capture_output=True, text=True, check=False)
                if out.returncode:  # pyarrow has aborted at exit after read_table ("terminate called ...")
                    failed[name].append(f"rc {out.returncode}: {out.stderr.strip().splitlines()[-1:]}")
                    print(f"{name}: {failed[name][-1]}", flush=True)
                    continue
                runs[name].append([float(x) for x in out.stdout.split()])
                print(f"{name}: {runs[name][-1][0]:.2f} s, {runs[name][-1][1] / 2**20:.0f} MiB", flush=True)
    finally:
        server.stop()
    title = (f"probe_remote_parquet: {args.layers} layer columns of {args.rows} rows of 64x64 float32 in one parquet "
             f"file on a local S3 server (moto), checked and read through s3fs, fresh processes; {os.cpu_count()} "
             f"cores, {platform.machine()}")
    lines = [title, f"{'tree':<10} {'wall (median)':>14} {'peak RSS (median)':>18} {'runs failed':>12}"]
    for name, measured in runs.items():
        wall, rss = ((statistics.median(r[i] for r in measured) if measured else float("nan")) for i in (0, 1))
        lines.append(f"{name:<10} {wall:>12.2f} s {rss / 2**20:>14.0f} MiB {len(failed[name]):>5} of {args.rounds}")
    lines += [f"{name} failed: {why}" for name, whys in failed.items() for why in whys]
    table = "\n".join(lines)
    print("\n" + table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "remote-parquet.txt").write_text(table + "\n")


if __name__ == "__main__":
    main()
