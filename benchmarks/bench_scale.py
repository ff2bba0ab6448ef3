"""The 1k `svd` build on each store backend: a local directory, fsspec's memory://, and a local S3
server (moto's, on 127.0.0.1), side by side in one run, after a warm-up build (page cache, code paths).

    python benchmarks/bench_scale.py [--out benchmarks/results]

Then the same build on a local Dask cluster of 1 and of 2 worker processes (`--workers`).
With --preset-10k, also the 10k preset (generated if missing: 21 GB) on 2 workers, with each
worker's peak RSS.
Prints the table and writes benchmarks/results/scale.txt.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import socket
import tempfile
import time
import uuid
from pathlib import Path

import featstore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--preset-10k", action="store_true", help="also build the 10k preset (21 GB) on 2 workers")
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the S3 server's request log
    featstore.build("1k", ["svd"], store=f"memory://warm/{uuid.uuid4().hex}", device="cpu")  # page cache, code paths
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, url in (("local directory", f"{tmp}/store"), ("memory://", f"memory://bench/{uuid.uuid4().hex}"),
                              ("S3 (moto server on 127.0.0.1)", f"s3://bench-{uuid.uuid4().hex[:8]}/store")):
                start = time.perf_counter()
                report = featstore.build("1k", ["svd"], store=url, device="cpu")
                cold = time.perf_counter() - start
                start = time.perf_counter()
                again = featstore.build("1k", ["svd"], store=url, device="cpu")
                noop = time.perf_counter() - start
                start = time.perf_counter()
                with featstore.open("1k", store=url) as fs:
                    fs.load_many(fs.layers, "svd", stack=True)
                load = time.perf_counter() - start
                assert report.computed == 256 and again.computed == 0
                rows.append((name, cold, noop, load, report.seconds["write"]))
    finally:
        server.stop()
    spread = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            report = featstore.build("1k", ["svd"], store=f"{tmp}/store", device="cpu", workers=workers)
            spread.append((workers, time.perf_counter() - start, report.computed))
    big = None
    if args.preset_10k:
        from featstore import presets

        if not (presets.default_dir("10k") / "dataset_dict.json").exists():
            presets.make("10k", presets.default_dir("10k"))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            report = featstore.build("10k", ["svd"], store=f"{tmp}/store", device="cpu", workers=2)
            big = (time.perf_counter() - start, report.computed, report.worker_peak_rss)
    base = rows[0][1]
    lines = [f"bench_scale: 1k preset, svd, 256 entries, CPU build; {platform.machine()}, {os.cpu_count()} cores", "",
             f"{'store':32} {'cold s':>8} {'ratio':>7} {'no-op s':>8} {'load 128 layers s':>18} {'write s (summed)':>17}"]
    lines += [f"{n:32} {c:8.2f} {c / base:6.2f}x {o:8.2f} {ld:18.2f} {w:17.2f}" for n, c, o, ld, w in rows]
    lines += ["", "cold build on a local Dask cluster (worker processes of one thread each, local store):",
              *(f"  --workers {w}: {t:6.2f} s ({n} entries), speed-up {spread[0][1] / t:.2f}x" for w, t, n in spread)]
    if big:
        rss = ", ".join(f"{v / 2**30:.2f} GiB" for v in big[2].values())
        lines += ["", (f"10k preset (21 GB), svd, --workers 2: {big[0]:.1f} s, {big[1]} entries; peak RSS per worker: {rss}"
                  " (bar < 2 GB)")]
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
