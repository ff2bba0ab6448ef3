"""Cold builds of the 1k preset's `svd` features: GPU vs the CPU path on the same machine, and the
GPU build vs its stages timed alone, all in one process (the featurizers issue's GPU bars).

    python benchmarks/bench_gpu_build.py [--device cuda] [--repeat 3] [--out benchmarks/results]

A first build pays for CUDA, cuSOLVER and Triton start-up and warms the page cache; it is not
counted. Then: `--repeat` GPU builds at Python's default GIL switch interval (5 ms) and as many
at 0.5 ms (threads waiting for the GIL get it sooner), the three stages of the same work timed
alone over all 256 columns (read = hash + copy to pinned memory + copy to the GPU; compute = svd
+ copy back; write = publish the entry; on the CPU also plain batched `torch.linalg.svdvals`, the
CPU bar's baseline), and two builds on the CPU. On a GPU also the host's stages alone: read +
plain batched `svdvals` + write is the CPU path written the obvious way, the route the issue's
CPU timings measured (not featstore's CPU build, which the 20x bar names). Last, what a user's command
costs: `featstore build` in fresh processes, twice per device (wall time, with the start-up of
Python, torch and CUDA, and the build's own total). Medians; prints the table and writes it to
--out/build-1k-svd-<device>.txt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import featstore
from featstore import commit
from featstore.columns import join_parts
from featstore.compute import compute
from featstore.device import host_tensor, resolve
from featstore.featurizers import parse_spec
from featstore.keys import parts_digest
from featstore.sources import load_source
from featstore.store import Store


def build(device: str) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = featstore.build("1k", ["svd"], store=f"{tmp}/s", device=device)
        return time.perf_counter() - start, {k: round(v, 2) for k, v in report.seconds.items()}


def cli_build(device: str) -> tuple[float, float]:
    """(wall seconds, the build's own total) of `featstore build` in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "featstore.cli", "build", "-d", "1k", "-f", "svd", "--store", f"{tmp}/s",
                   "--device", device, "--json", "--no-progress"]
        start = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        return time.perf_counter() - start, json.loads(out.stdout)["seconds"]["total"]


def stages(device: str) -> dict[str, float]:
    """Each stage of the build over every column, alone and in sequence (no overlap); on the CPU
    also the issue's baseline for compute, plain batched `torch.linalg.svdvals` ("svdvals")."""
    source, svd = load_source("1k"), parse_spec("svd")
    seconds = dict.fromkeys(("read", "compute", "write", *(("svdvals",) if device == "cpu" else ())), 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"{tmp}/s", create=True)
        for layer in source.layers:
            for split in source.splits.values():
                start = time.perf_counter()
                layout, parts = split.parts(layer)
                digest = parts_digest(parts, layout.dtype, (layout.rows, *layout.value_shape))
                x = host_tensor(join_parts(layout, parts), device).to(device, non_blocking=True)
                split.release(parts)
                torch.cuda.synchronize() if device.startswith("cuda") else None
                middle = time.perf_counter()
                out = compute(svd, x, (layout.rows, 16), layer, "s", device)
                end = time.perf_counter()
                key = f"{hash((layer, id(split), digest)) & (1 << 64) - 1:032x}"
                store.write_entry(commit.entry_info(key, digest, svd.identity, out, "", device), out)
                seconds["read"] += middle - start
                seconds["compute"] += end - middle
                seconds["write"] += time.perf_counter() - end
                if "svdvals" in seconds:
                    start = time.perf_counter()
                    torch.linalg.svdvals(x)[:, :16].clone()
                    seconds["svdvals"] += time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = resolve(args.device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    lines = [(f"bench_gpu_build: 1k preset, svd, 128 layers x 2 splits; {device} ({name}), "
             f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")]
    print(lines[0], flush=True)
    build(device)  # start-up and page cache
    medians = {}
    for interval in (0.005, 0.0005):
        sys.setswitchinterval(interval)
        runs = [build(device) for _ in range(args.repeat)]
        medians[interval] = statistics.median(t for t, _ in runs)
        for t, seconds in runs:
            lines.append(f"  {device} build, GIL switch interval {interval * 1e3:.1f} ms: {t:6.2f} s  {seconds}")
            print(lines[-1], flush=True)
    sys.setswitchinterval(0.005)
    best = min(medians, key=medians.get)
    sys.setswitchinterval(best)
    alone = stages(device)
    sys.setswitchinterval(0.005)
    slowest = max(("read", "compute", "write"), key=alone.get)
    cpu = [build("cpu") for _ in range(2)] if device != "cpu" else []
    host = stages("cpu") if device != "cpu" else {}
    for t, seconds in cpu:
        lines.append(f"  cpu build: {t:6.2f} s  {seconds}")
    fresh = {d: [cli_build(d) for _ in range(2)] for d in dict.fromkeys((device, "cpu"))}
    for d, runs in fresh.items():
        for wall, total in runs:
            lines.append(f"  featstore build --device {d} in a fresh process: {wall:6.2f} s wall, build {total:.2f} s")
    summary = len(lines)
    lines += [
        "",
        f"median {device} build (interval {best * 1e3:.1f} ms)   {medians[best]:7.2f} s",
        "stages alone: " + ", ".join(f"{k} {v:.2f} s" for k, v in alone.items()),
        f"build / slowest stage ({slowest})          {medians[best] / alone[slowest]:7.2f}x   (bar <= 1.5x)",
        f"build / sum of stages                  {medians[best] / (alone['read'] + alone['compute'] + alone['write']):7.2f}x",
    ]
    if "svdvals" in alone:  # the CPU bar: read + plain batched svdvals + write, measured separately
        baseline = alone["read"] + alone["svdvals"] + alone["write"]
        lines.append(f"build / (read + batched svdvals + write) {medians[best] / baseline:5.2f}x   (bar <= 1.3x)")
    if cpu:
        cpu_median = statistics.median(t for t, _ in cpu)
        lines.append(f"cpu build (median of 2) / {device} build  {cpu_median / medians[best]:7.2f}x   (bar >= 20x)")
        walls = {d: statistics.median(w for w, _ in runs) for d, runs in fresh.items()}
        lines.append(f"fresh processes, cpu / {device} wall       {walls['cpu'] / walls[device]:7.2f}x")
        obvious = host["read"] + host["svdvals"] + host["write"]
        lines.append("host stages alone: " + ", ".join(f"{k} {v:.2f} s" for k, v in host.items()))
        lines.append(f"CPU the obvious way (read + svdvals + write, {obvious:.2f} s) / {device} build "
                     f"{obvious / medians[best]:5.2f}x   (not the bar: see the docstring)")
    print("\n".join(lines[summary - len(cpu) - sum(map(len, fresh.values())):]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"build-1k-svd-{device.split(':')[0]}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
