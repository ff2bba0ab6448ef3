"""`featstore status` on the 1k preset when everything is fresh, in fresh processes, with the page
cache warm and dropped (as after a reboot, or when other work evicted the dataset): wall seconds.

    python benchmarks/bench_status.py [--runs 3]

Builds `stats` + `svd` into a temporary store first. Dropping the page cache needs root
(`/proc/sys/vm/drop_caches`); without it, only the warm case is timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import featstore


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        featstore.build("1k", ["stats", "svd"], store=store)
        command = [sys.executable, "-m", "featstore.cli", "status", "-d", "1k", "--store", store]
        for case in ("warm page cache", "dropped page cache"):
            walls = []
            for _ in range(args.runs):
                if case.startswith("dropped") and not drop_caches():
                    print(f"{case}: skipped (no permission to drop caches)")
                    break
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                walls.append(time.perf_counter() - start)
            if walls:
                runs = " ".join(f"{w:.2f}" for w in walls)
                print(f"{case:20} median {statistics.median(walls):.2f} s   runs {runs}", flush=True)


if __name__ == "__main__":
    main()
