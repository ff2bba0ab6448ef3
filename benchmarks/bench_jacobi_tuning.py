"""Tuning of the Triton Jacobi kernel: warps per program and sweeps, per width, on a CUDA GPU.

    python benchmarks/bench_jacobi_tuning.py [--out benchmarks/results]

(1000, d, d) rank-4 + noise batches (the 1k preset's kind), the kernel's own QR included; error =
max |s - s_ref| / s_max against float64 NumPy; off = the kernel's own convergence measure (the
route accepts <= 1e-5). Medians over 3 batches after a warm-up. Then the routes
`singular_values` and the gesvda-failed fallback `_jacobi_then_gram`, for the same batches.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from bench_svdvals import lora_batch

from featstore import svdvals as sv
from featstore.jacobi_triton import jacobi_row_norms


def timed(fn, x):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(x)
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    lines = [f"bench_jacobi_tuning on {torch.cuda.get_device_name()}, torch {torch.__version__}"]
    print(lines[0], flush=True)

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    for d in (64, 128):
        xs = [torch.from_numpy(lora_batch(1000, d, 32 + i)).cuda() for i in range(3)]
        refs = [np.linalg.svd(x.double().cpu().numpy(), compute_uv=False) for x in xs]
        for warps in (1, 2, 4, 8, 16):
            for sweeps in (5, 6, 8):
                def kernel(x, sweeps=sweeps, warps=warps):
                    return jacobi_row_norms(x.mT.contiguous(), sweeps, warps, qr=True)
                times, errors, offs = [], [], []
                for x, ref in [(xs[0], refs[0]), *zip(xs, refs)]:
                    seconds, (norms, off) = timed(kernel, x)
                    values = norms.sort(1, descending=True).values.double().cpu().numpy()
                    times.append(seconds)
                    errors.append(float((np.abs(values - ref).max(1) / ref[:, 0]).max()))
                    offs.append(float(off.max()))
                emit(f"d={d} warps={warps} sweeps={sweeps}: {statistics.median(times[1:]) * 1e3:8.2f} ms  "
                     f"err {max(errors[1:]):.1e}  off {max(offs):.1e}")
        for name in ("singular_values", "_jacobi_then_gram"):
            fn = getattr(sv, name)
            fn(xs[0])
            emit(f"{d} {name} {statistics.median(timed(fn, x)[0] for x in xs) * 1e3:.2f} ms")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "jacobi-tuning-cuda.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
