"""Featurizers on the shapes real LoRA adapters store: the factors `lora_A` (r x d_in) and `lora_B`
(d_out x r), not just the 1k preset's square 64 x 64 deltas.

    python benchmarks/bench_shapes.py [--device cpu|cuda] [--rows 1000] [--shapes 16x4096 4096x16 ...]

Inputs: per row, a rank-4 matrix with a geometric spectrum plus 1e-3 noise (rank-deficient, as
the featurizers issue measured), generated in memory. Per shape: median ms per column of each
built-in vs the plain-torch baseline of bench_featurizers.py, and the largest error of a row's
features relative to that row's largest reference value against float64 NumPy (first 200 rows);
then every singular-value route on that shape (time, error, batches failed). Prints the tables and
writes them to --out/shapes-<device>.txt.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
import torch
from bench_featurizers import baseline, reference, timed

from featstore.device import resolve
from featstore.featurizers import parse_spec
from featstore.svdvals import _gram_jacobi, gram_svdvals, jacobi_svdvals, singular_values

CHECKED_ROWS = 200


def lora_factors(rows: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    """(rows, *shape) float32: U diag(s) V^T with rank 4, s geometric per row, plus 1e-3 noise."""
    rng = np.random.default_rng(seed)
    m, n = shape
    u = np.linalg.qr(rng.standard_normal((rows, m, 4)))[0]
    v = np.linalg.qr(rng.standard_normal((rows, n, 4)))[0]
    s = rng.uniform(0.5, 2.0, (rows, 1)) * 0.5 ** np.arange(4)
    out = (u * s[:, None, :]) @ v.transpose(0, 2, 1) + 1e-3 * rng.standard_normal((rows, m, n))
    return out.astype(np.float32)


def svd_routes(device: str) -> dict:
    out = {"featstore singular_values": singular_values, "gram float64 + eigvalsh": gram_svdvals,
           "torch.linalg.svdvals (default)": torch.linalg.svdvals}
    if device.startswith("cuda"):
        out["svdvals driver=gesvda"] = lambda x: torch.linalg.svdvals(x, driver="gesvda")
        out["jacobi triton f64 (torch's QR first)"] = lambda x: jacobi_svdvals(x)[0]
        out["gram f64 + jacobi triton, unchecked"] = lambda x: _gram_jacobi(x)[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--shapes", nargs="+", default=["64x64", "16x4096", "4096x16", "64x4096", "4096x64", "8x2048"])
    parser.add_argument("--columns", type=int, default=3, help="columns timed per shape (after one warm-up)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = resolve(args.device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    lines = [(f"bench_shapes on {device} ({name}), torch {torch.__version__}, {args.rows} rows per column, "
              f"rank 4 + 1e-3 noise, {args.columns} columns per shape (medians); error vs float64 NumPy, first "
              f"{CHECKED_ROWS} rows")]
    print(lines[0], flush=True)
    for text in args.shapes:
        shape = tuple(int(d) for d in text.split("x"))
        columns = [lora_factors(args.rows, shape, seed) for seed in range(args.columns + 1)]
        tensors = [torch.from_numpy(c).to(device) for c in columns]
        head = f"{text:>9}  {'featurizer':34} {'featstore ms':>12} {'plain ms':>9} {'ratio':>6} {'max err':>8}"
        lines += ["", head]
        print("\n".join(lines[-2:]), flush=True)
        for feat in ("stats", "svd", "spectral", "randproj", "norms"):  # raw: a copy, whatever the shape
            bound, plain = parse_spec(feat), baseline(feat)
            ours = statistics.median([timed(lambda t=t, f=bound: f(t), device) for t in tensors][1:])
            theirs = statistics.median([timed(lambda t=t, f=plain: f(t), device) for t in tensors][1:])
            ref = reference(feat, columns[1][:CHECKED_ROWS]).reshape(CHECKED_ROWS, -1)
            got = bound(tensors[1][:CHECKED_ROWS]).double().cpu().numpy().reshape(CHECKED_ROWS, -1)
            if feat == "svd":  # zero-padded past min(rows, cols)
                assert not got[:, ref.shape[1]:].any()
                got = got[:, : ref.shape[1]]
            err = float((np.abs(got - ref).max(1) / np.abs(ref).max(1).clip(1e-300)).max())
            lines.append(f"{'':9}  {feat:34} {ours * 1e3:12.2f} {theirs * 1e3:9.2f} {theirs / ours:5.2f}x {err:8.1e}")
            print(lines[-1], flush=True)
        refs = [np.linalg.svd(c[:CHECKED_ROWS].astype(np.float64), compute_uv=False) for c in columns]
        for route, fn in svd_routes(device).items():
            times, errors, failed = [], [], 0
            for i, (t, ref) in enumerate(zip(tensors, refs)):
                try:
                    seconds = timed(lambda t=t, f=fn: f(t), device)
                    values = fn(t[:CHECKED_ROWS]).double().cpu().numpy()
                except RuntimeError:
                    failed += i > 0
                    continue
                if i:  # the first is a warm-up
                    times.append(seconds)
                    errors.append(float((np.abs(values - ref).max(1) / ref[:, 0]).max()))
            ms = f"{statistics.median(times) * 1e3:12.2f}" if times else f"{'-':>12}"
            err = f"{max(errors):8.1e}" if errors else f"{'-':>8}"
            lines.append(f"{'':9}  svd route: {route:23} {ms} {'':9} {'':6} {err}  failed {failed}/{args.columns}")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"shapes-{device.split(':')[0]}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
