"""Where a cold 1k `svd` build's GPU compute goes: the kernel, the steps around it, the build's main thread.

    python benchmarks/probe_gpu_compute.py [--device cuda] [--repeat 3] [--out benchmarks/results]

(a) Every column of the 1k preset (256: 128 layers x 2 splits) already on the GPU, each step run
over all of them in turn, cumulatively: the Jacobi kernel alone (its input padded beforehand),
synchronised once at the end (what the GPU needs) and after every column; `jacobi_svdvals` (the
kernel, the sort); `singular_values` (also the convergence check, a wait for the GPU); the `svd`
featurizer; `compute` (its checks, the copy back to the host); from pinned host memory, as a
build does; and the kernel and `compute` on each layer's two splits joined into one batch. (b) Cold builds, with the build's main thread timed by hand: waiting for a column
from the readers, computing (`compute`), everything else. Medians; prints the table and writes it
to --out/gpu-compute-<device>.txt.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import featstore
from featstore import builder
from featstore.columns import join_parts
from featstore.compute import compute
from featstore.device import host_tensor, resolve
from featstore.featurizers import parse_spec
from featstore.sources import load_source
from featstore.svdvals import JACOBI_SWEEPS, jacobi_svdvals, singular_values


def columns(device: str) -> list:
    """Every column of 1k as a pinned host tensor."""
    source = load_source("1k")
    out = []
    for layer in source.layers:
        for split in source.splits.values():
            layout, parts = split.parts(layer)
            out.append(host_tensor(join_parts(layout, parts), device))
            split.release(parts)
    return out


def timed(step, items, sync_each: bool = False) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for item in items:
        step(item)
        if sync_each:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def build_main_thread(device: str) -> dict[str, float]:
    """One cold build, its main thread's time split: waiting for readers, compute, the rest."""
    spent = {"waiting for a column": 0.0, "compute": 0.0}
    real_compute = builder.compute

    def compute_timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real_compute(*args, **kwargs)
        finally:
            spent["compute"] += time.perf_counter() - start

    class Waited:  # the Future a reader returns: time the main thread's wait on it
        def __init__(self, future):
            self.future = future

        def result(self):
            start = time.perf_counter()
            try:
                return self.future.result()
            finally:
                spent["waiting for a column"] += time.perf_counter() - start

        def cancel(self):
            return self.future.cancel()

    real_deque = builder.deque

    class TimedDeque(real_deque):  # the builder's queue of (unit, the future of its read)
        def popleft(self):
            item = super().popleft()
            if isinstance(item, tuple) and len(item) == 2 and hasattr(item[1], "set_result"):
                return item[0], Waited(item[1])
            return item

    builder.compute, builder.deque = compute_timed, TimedDeque
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            featstore.build("1k", ["svd"], store=f"{tmp}/s", device=device)
            total = time.perf_counter() - start
    finally:
        builder.compute, builder.deque = real_compute, real_deque
    spent["the rest"] = total - sum(spent.values())
    spent["build"] = total
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = resolve(args.device)
    from featstore.jacobi_triton import jacobi_row_norms  # imports triton: CUDA machines only

    hosts = columns(device)
    xs = [h.to(device) for h in hosts]
    padded = [x.mT.contiguous() for x in xs]  # 64x64: no padding; the kernel's rows are the columns
    joined = [torch.cat(xs[i : i + 2]) for i in range(0, len(xs), 2)]  # columns come layer by layer
    joined_v = [x.mT.contiguous() for x in joined]
    svd = parse_spec("svd")
    steps = {
        "Jacobi kernel alone, one wait at the end": (lambda v: jacobi_row_norms(v, JACOBI_SWEEPS, qr=True,
                                                                                dtype="float64"), padded, False),
        "Jacobi kernel alone, a wait after each column": (lambda v: jacobi_row_norms(v, JACOBI_SWEEPS, qr=True,
                                                                                     dtype="float64"), padded, True),
        "jacobi_svdvals (kernel, sort)": (jacobi_svdvals, xs, False),
        "singular_values (+ convergence check)": (singular_values, xs, False),
        "svd featurizer": (svd, xs, False),
        "compute (checks, copy back)": (lambda x: compute(svd, x, (len(x), 16), "l", "s", device), xs, False),
        "copy in from pinned memory + compute": (lambda h: compute(svd, h.to(device, non_blocking=True),
                                                                   (len(h), 16), "l", "s", device), hosts, False),
        "Jacobi kernel alone, a layer's splits joined": (lambda v: jacobi_row_norms(v, JACOBI_SWEEPS, qr=True,
                                                                                    dtype="float64"), joined_v, False),
        "compute, a layer's splits joined": (lambda x: compute(svd, x, (len(x), 16), "l", "s", device), joined, False),
    }
    for step, items, each in steps.values():  # warm-up: Triton, cuSOLVER, the caching allocator
        timed(step, items[:4], each)
    name = torch.cuda.get_device_name(device)
    lines = [f"probe_gpu_compute: 1k preset, svd, {len(xs)} columns; {device} ({name}), torch {torch.__version__}",
             f"(a) every column already on the GPU, seconds over all {len(xs)} (median of {args.repeat})"]
    print(lines[0], flush=True)
    for label, (step, items, each) in steps.items():
        runs = [timed(step, items, each) for _ in range(args.repeat)]
        lines.append(f"  {label:<48} {statistics.median(runs):6.3f} s   " + " ".join(f"{r:.3f}" for r in runs))
        print(lines[-1], flush=True)
    featstore.build("1k", ["svd"], store=tempfile.mkdtemp() + "/s", device=device)  # page cache, first-build costs
    runs = [build_main_thread(device) for _ in range(args.repeat)]
    lines.append(f"(b) cold builds, the main thread's time (median of {args.repeat})")
    for key in runs[0]:
        values = [r[key] for r in runs]
        lines.append(f"  {key:<48} {statistics.median(values):6.3f} s   " + " ".join(f"{v:.3f}" for v in values))
    print("\n".join(lines[-len(runs[0]) - 1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu-compute-{device.replace(':', '')}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
