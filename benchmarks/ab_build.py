"""Cold builds of the 1k preset by two checkouts of featstore, alternating in fresh processes, so a
change is measured side by side on a noisy machine (the builds' own seconds, medians).

    git worktree add /tmp/old <commit>
    python benchmarks/ab_build.py --old /tmp/old [--featurizers svd] [--rounds 3] [--device cuda] [--first]

Each round runs one cold build per checkout (a new store each time) after a warm-up build of the
sanity preset in the same process (imports, threads); with --first, the build is the first thing
the process does, timed from before `import featstore` (what one `featstore build` pays). Prints
one line per build and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys, tempfile, time, featstore
featurizers, device = sys.argv[1].split(","), sys.argv[2]
featstore.build("sanity", featurizers, store=tempfile.mkdtemp(), device=device)
with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    featstore.build("1k", featurizers, store=tmp, device=device)
    print(f"{time.perf_counter() - start:.2f}")
"""
FIRST = """
import sys, tempfile, time
start = time.perf_counter()
import featstore
featurizers, device = sys.argv[1].split(","), sys.argv[2]
with tempfile.TemporaryDirectory() as tmp:
    featstore.build("1k", featurizers, store=tmp, device=device)
print(f"{time.perf_counter() - start:.2f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="a checkout of the version to compare with")
    parser.add_argument("--featurizers", default="svd")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--first", action="store_true", help="time a fresh process's first build, imports included")
    args = parser.parse_args()
    trees = {"old": str(Path(args.old).resolve()), "new": str(Path(__file__).resolve().parents[1])}
    times: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            path = os.pathsep.join([tree, *filter(None, [os.environ.get("PYTHONPATH")])])  # the tree first
            child = FIRST if args.first else CHILD
            out = subprocess.run([sys.executable, "-c", child, args.featurizers, args.device], capture_output=True,
                                 text=True, check=True, env={**os.environ, "PYTHONPATH": path}, cwd="/")
            times[name].append(float(out.stdout.split()[-1]))
            print(f"{name} ({tree}): {times[name][-1]:.2f} s", flush=True)
    old, new = (statistics.median(times[n]) for n in ("old", "new"))
    print(f"median old {old:.2f} s, new {new:.2f} s: new is {old / new:.2f}x as fast")


if __name__ == "__main__":
    main()
