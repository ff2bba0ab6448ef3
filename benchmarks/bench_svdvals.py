"""Batched singular values of LoRA-like matrices: every route, time and accuracy, side by side.

    python benchmarks/bench_svdvals.py [--device cuda] [--rows 1000] [--dims 16 32 64 128] [--batches 5]

Inputs are the 1k preset's matrices (rank 4 + noise, rank-deficient like real LoRA deltas),
generated in memory: `--batches` different layers per size. Error = max |s - s_ref| / s_max against
float64 NumPy. Times are medians over the batches (after one warm-up). Prints one table.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from featstore import presets
from featstore.svdvals import (
    TRITON_MAX_WIDTH,
    _cpu_svdvals,
    _jacobi_then_gram,
    gram_svdvals,
    jacobi_svdvals,
    singular_values,
)


def lora_batch(rows: int, dim: int, layer: int) -> np.ndarray:
    p = presets.Preset("bench", rows=rows, layers=128, dim=dim, seed=1000)
    y = presets.labels(p)
    blocks = [presets.layer_block(p, layer, a, min(a + presets.BLOCK_ROWS, rows), y[a : a + presets.BLOCK_ROWS])
              for a in range(0, rows, presets.BLOCK_ROWS)]
    return np.concatenate(blocks)


def torch_qr_then_kernel(x):
    """The route before the kernel did its own QR (square blocks): torch's batched QR first."""
    from featstore.jacobi_triton import jacobi_row_norms

    r = torch.linalg.qr(x.double(), mode="r").R.contiguous()
    return jacobi_row_norms(r, 8, dtype="float64")[0].sort(1, descending=True).values


def routes(device: str, dim: int) -> dict:
    """Every route for (n, dim, dim) batches on `device`. The kernel's routes stop at
    TRITON_MAX_WIDTH: wider, its matrix no longer fits in registers, and featstore's fallback is Gram."""
    if not device.startswith("cuda"):  # the library routes and ours; the Jacobi is a GPU kernel
        return {
            "torch.linalg.svdvals (default)": lambda x: torch.linalg.svdvals(x),
            "gram float64 + eigvalsh": gram_svdvals,
            "featstore singular_values": singular_values,
            "svdvals split over the cores (before)": functools.partial(_cpu_svdvals, route=torch.linalg.svdvals),
        }
    out = {
        "torch.linalg.svdvals (default)": lambda x: torch.linalg.svdvals(x),
        "gram float64 + eigvalsh": gram_svdvals,
        "jacobi triton f64, no QR, 12 sweeps": lambda x: jacobi_svdvals(x, 12, precondition=False)[0],
        "jacobi triton f64 + QR, 6 sweeps": lambda x: jacobi_svdvals(x, 6)[0],
        "jacobi triton f64 + QR, 8 sweeps": lambda x: jacobi_svdvals(x, 8)[0],
        "jacobi triton f32 + QR, 8 sweeps": lambda x: jacobi_svdvals(x, 8, dtype=torch.float32)[0],
        "torch's QR alone": lambda x: torch.linalg.qr(x, mode="r").R,
        "featstore singular_values": singular_values,
        "featstore fallback (no gesvda)": _jacobi_then_gram,
    }
    out["svdvals driver=gesvda"] = lambda x: torch.linalg.svdvals(x, driver="gesvda")
    if dim & (dim - 1) == 0:  # the kernel alone, unpadded: powers of two only
        out["jacobi triton f64 + torch's QR, 8 sw."] = torch_qr_then_kernel
    if dim > TRITON_MAX_WIDTH:
        out = {route: fn for route, fn in out.items() if "triton" not in route and "fallback" not in route}
    return out


def gesvda_census(x) -> tuple[int, int]:
    """(matrices on which `gesvda` fails even alone, found by halving a failing batch; matrices of
    the batch whose values featstore's check rejects (Frobenius norm), where it does not fail)."""
    from featstore.svdvals import _frobenius_mismatch

    try:
        values = torch.linalg.svdvals(x, driver="gesvda")
    except RuntimeError:
        if len(x) == 1:
            return 1, 0
        halves = [gesvda_census(half) for half in x.split((len(x) + 1) // 2)]
        return sum(h[0] for h in halves), sum(h[1] for h in halves)
    return 0, int(_frobenius_mismatch(x, values).sum())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores"
    title = (f"bench_svdvals on {args.device} ({name}), torch {torch.__version__}, ({args.rows}, d, d) "
             f"rank-4 + noise batches, {args.batches} per d")
    lines = [title,
             f"{'d':>4}  {'route':37} {'median ms':>10} {'max err':>9} {'failed':>7}"]
    print("\n".join(lines), flush=True)
    for dim in args.dims:
        batches = [lora_batch(args.rows, dim, 32 + i) for i in range(args.batches)]
        refs = [np.linalg.svd(b.astype(np.float64), compute_uv=False) for b in batches]
        for route, fn in routes(args.device, dim).items():
            times, errors, failed = [], [], 0
            for i, (b, ref) in enumerate([(batches[0], refs[0]), *zip(batches, refs)]):
                x = torch.from_numpy(b).to(args.device)
                sync(args.device)
                start = time.perf_counter()
                try:
                    values = fn(x)
                    sync(args.device)
                except RuntimeError:
                    failed += i > 0
                    continue
                if i == 0:
                    continue  # warm-up (graph capture, cuSOLVER handles)
                times.append(time.perf_counter() - start)
                if route == "torch's QR alone":
                    continue
                v = values.double().cpu().numpy()
                errors.append(float((np.abs(v - ref).max(1) / ref[:, 0]).max()))
            ms = f"{statistics.median(times) * 1e3:10.2f}" if times else f"{'-':>10}"
            err = f"{max(errors):9.1e}" if errors else f"{'-':>9}"
            lines.append(f"{dim:>4}  {route:37} {ms} {err} {failed:>4}/{args.batches}")
            print(lines[-1], flush=True)
        if args.device.startswith("cuda"):
            census = [gesvda_census(torch.from_numpy(b).to(args.device)) for b in batches]
            lines.append(f"{dim:>4}  gesvda per batch: matrices failing alone {[c[0] for c in census]}, "
                         f"values rejected by the Frobenius check {[c[1] for c in census]} (of {args.rows})")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.device.split(":")[0]
    (out / f"svdvals-{tag}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
