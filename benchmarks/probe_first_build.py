"""Where the first build in a fresh process spends the time the second does not (cold 1k `svd`).

    python benchmarks/probe_first_build.py [--device cuda] [--repeat 3] [--out benchmarks/results]
    python benchmarks/probe_first_build.py --profile   # cProfile of the first singular-value call

Alternating fresh processes: (a) import, start the device, build twice; (b) the same, but first
warm up by hand the pieces a build needs on the device the first time (the Triton kernel on one
64x64 matrix, then a full 800 x 64x64 batch, a pinned host buffer), each timed. If (b)'s first
build is as fast as its second, those pieces are the first build's extra cost. (c) starts
`prefetch_triton` (Triton's cache key, in a thread) before importing torch, as a GPU build does,
then times the first call on one 64x64 matrix: what the prefetch leaves of (b)'s first call.
Medians per line; prints the table and writes it to --out/first-build-<device>.txt. With
--profile, instead, a fresh process prints the cProfile of its first `singular_values` call
(after torch, the device and `import triton`), the functions that took the most time first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, tempfile, time
t = {}
device, warm, prefetch = sys.argv[1], sys.argv[2] == "warm", sys.argv[2] == "prefetch"
if prefetch:  # what a GPU build does before it imports torch
    from featstore.svdvals import prefetch_triton
    prefetch_triton()
start = time.perf_counter()
import torch
t["import torch"] = time.perf_counter() - start
start = time.perf_counter()
torch.zeros(1, device=device).cpu()
t["start the device"] = time.perf_counter() - start
import featstore
from featstore.svdvals import singular_values
if prefetch:
    x = torch.zeros(1, 64, 64, device=device)
    start = time.perf_counter()
    singular_values(x).cpu()
    t["singular values of 1 x 64x64, first"] = time.perf_counter() - start
if warm:
    for name, make in (("singular values of 1 x 64x64, first", lambda: torch.zeros(1, 64, 64, device=device)),
                       ("singular values of 800 x 64x64, first", lambda: torch.randn(800, 64, 64, device=device)),
                       ("singular values of 800 x 64x64, again", lambda: torch.randn(800, 64, 64, device=device))):
        x = make()
        start = time.perf_counter()
        singular_values(x).cpu()
        t[name] = time.perf_counter() - start
    start = time.perf_counter()
    torch.empty(800, 64, 64, pin_memory=device.startswith("cuda"))
    t["a 13 MB host buffer (pinned on a GPU), first"] = time.perf_counter() - start
for run in ("first", "second"):
    with tempfile.TemporaryDirectory() as tmp:
        t[f"build, {run} in the process"] = featstore.build("1k", ["svd"], store=tmp + "/s",
                                                             device=device).seconds["total"]
print(json.dumps(t))
"""
PROFILE = """
import cProfile, pstats, sys, time, torch
torch.zeros(1, device=sys.argv[1]).cpu()
if sys.argv[1].startswith("cuda"):
    import featstore.jacobi_triton  # imports triton
from featstore.svdvals import singular_values
x = torch.zeros(1, 64, 64, device=sys.argv[1])
profile = cProfile.Profile()
profile.enable()
singular_values(x).cpu()
profile.disable()
start = time.perf_counter()
singular_values(x).cpu()
print(f"second call {time.perf_counter() - start:.4f} s")
pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--profile", action="store_true", help="profile the first singular-value call instead")
    args = parser.parse_args()
    if args.profile:
        subprocess.run([sys.executable, "-c", PROFILE, args.device], check=True)
        return
    runs: dict[str, list[dict]] = {"cold": [], "warm": [], "prefetch": []}
    for _ in range(args.repeat):
        for mode, found in runs.items():
            out = subprocess.run([sys.executable, "-c", CHILD, args.device, mode], capture_output=True, text=True,
                                 check=True).stdout
            found.append(json.loads(out.splitlines()[-1]))
            print(mode, found[-1], flush=True)
    lines = [f"probe_first_build: fresh processes, cold 1k svd builds on {args.device}, median of {args.repeat}"]
    for mode, label in (("cold", "(a) build straight away"), ("warm", "(b) warm-up by hand first"),
                        ("prefetch", "(c) prefetch_triton() before import torch, then one call by hand")):
        lines.append(label)
        for key in runs[mode][0]:
            values = [r[key] for r in runs[mode]]
            lines.append(f"  {key:48} {statistics.median(values):6.2f} s   " + " ".join(f"{v:.2f}" for v in values))
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"first-build-{args.device.split(':')[0]}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
