"""What a user's `featstore build` costs beyond the build: start-up, timed in fresh processes.

    python benchmarks/bench_startup.py [--device cuda] [--repeat 3] [--out benchmarks/results]

For a cold 1k `svd` build on `--device`, each in its own fresh Python process (median of
`--repeat`): the bare interpreter; `import featstore.cli` (what `featstore --help` costs);
`import torch`; the first `singular_values` call on one 64x64 matrix after that (LAPACK, or
Triton loading its kernel from its on-disk cache); for a GPU, torch with its CUDA context
started; two builds in one process (the first pays every first-time cost inside the build, the
second does not); and `featstore build` as a user runs it (wall time). Prints the table and
writes it to --out/startup-<device>.txt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_gpu_build import cli_build

from featstore.device import resolve

# Each prints the seconds of what it times (after what it needs first), or nothing: then the
# process's wall time is the measure.
FIRST_SVDVALS = """
import time, torch
from featstore.svdvals import singular_values
x = torch.zeros(1, 64, 64, device={device!r})
start = time.perf_counter()
singular_values(x).cpu()
print(time.perf_counter() - start)
"""
TWO_BUILDS = """
import json, tempfile, featstore
seconds = []
for _ in range(2):
    with tempfile.TemporaryDirectory() as tmp:
        seconds.append(featstore.build("1k", ["svd"], store=tmp + "/s", device={device!r}).seconds["total"])
print(json.dumps(seconds))
"""


def fresh(code: str) -> tuple[float, str]:
    """(wall seconds, stdout) of `python -c code` in a new process."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = resolve(args.device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    subprocess.run([sys.executable, "-m", "featstore.cli", "datasets", "make", "1k"], capture_output=True, check=True)
    cli_build(device)  # page cache, and Triton's on-disk kernel cache
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        rows = {
            "python -c pass": fresh("pass")[0],
            "import featstore.cli": fresh("import featstore.cli")[0],
            "import torch": fresh("import torch")[0],
            "first singular_values call (1 x 64x64), alone": float(fresh(FIRST_SVDVALS.format(device=device))[1]),
        }
        if device != "cpu":
            rows[f"import torch, start {device}"] = fresh(f"import torch; torch.zeros(1, device={device!r})")[0]
        first, second = json.loads(fresh(TWO_BUILDS.format(device=device))[1])
        rows["build in a fresh process (its own seconds)"] = first
        rows["second build in that process"] = second
        rows[f"featstore build --device {device} (wall)"] = cli_build(device)[0]
        for label, seconds in rows.items():
            runs.setdefault(label, []).append(seconds)
    wall = statistics.median(runs[f"featstore build --device {device} (wall)"])
    lines = [(f"bench_startup: cold 1k svd build, fresh processes; {device} ({name}), "
              f"torch {torch.__version__}, median of {args.repeat}"),
             f"  {'':52s} {'seconds':>8s} {'of the wall':>12s}  runs"]
    for label, values in runs.items():
        median = statistics.median(values)
        lines.append(f"  {label:52s} {median:8.2f} {median / wall:11.0%}   "
                     + " ".join(f"{v:.2f}" for v in values))
    print("\n".join(lines), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"startup-{device.split(':')[0]}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
