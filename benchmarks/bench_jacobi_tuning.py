"""Tuning of the Triton Jacobi kernel: working dtype, warps per program and sweeps, per width, on
a CUDA GPU.

    python benchmarks/bench_jacobi_tuning.py [--dims 64 128] [--dtypes float32 float64]
        [--warps 1 2 4 8 16] [--sweeps 5 6 8] [--out benchmarks/results]

(1000, d, d) rank-4 + noise batches (the 1k preset's kind), the kernel's own QR included; error =
max |s - s_ref| / s_max against float64 NumPy; off = the kernel's own convergence measure; then
the worst error and off on Gaussian (full-rank) batches, which converge slowest. Medians over 3
batches after a warm-up. Then the routes `singular_values` and the gesvda-failed fallback
`_jacobi_then_gram`, for the same batches.
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
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--warps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--sweeps", type=int, nargs="+", default=[5, 6, 8])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    lines = [f"bench_jacobi_tuning on {torch.cuda.get_device_name()}, torch {torch.__version__}"]
    print(lines[0], flush=True)

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    def error(norms, ref) -> float:
        values = norms.sort(1, descending=True).values.double().cpu().numpy()
        return float((np.abs(values - ref).max(1) / ref[:, 0]).max())

    for d in args.dims:
        xs = [torch.from_numpy(lora_batch(1000, d, 32 + i)).cuda() for i in range(3)]
        refs = [np.linalg.svd(x.double().cpu().numpy(), compute_uv=False) for x in xs]
        gauss = torch.randn(1000, d, d, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        gauss_ref = np.linalg.svd(gauss.double().cpu().numpy(), compute_uv=False)
        for dtype in args.dtypes:
            for warps in args.warps:
                for sweeps in args.sweeps:
                    def kernel(x, sweeps=sweeps, warps=warps, dtype=dtype):
                        return jacobi_row_norms(x.mT.contiguous(), sweeps, warps, qr=True, dtype=dtype)
                    runs = [timed(kernel, x) for x in [xs[0], *xs]][1:]
                    g_norms, g_off = kernel(gauss)
                    emit(f"d={d} {dtype} warps={warps} sweeps={sweeps}: "
                         f"{statistics.median(t for t, _ in runs) * 1e3:8.2f} ms  "
                         f"err {max(error(n, r) for (_, (n, _)), r in zip(runs, refs)):.1e}  "
                         f"off {max(float(o.max()) for _, (_, o) in runs):.1e}  "
                         f"gaussian err {error(g_norms, gauss_ref):.1e} off {float(g_off.max()):.1e}")
        for name in ("singular_values", "_jacobi_then_gram"):
            fn = getattr(sv, name)
            fn(xs[0])
            emit(f"{d} {name} {statistics.median(timed(fn, x)[0] for x in xs) * 1e3:.2f} ms")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "jacobi-tuning-cuda.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
