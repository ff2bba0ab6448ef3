"""One-sided Jacobi singular values in one Triton kernel: one program per matrix.

Each program holds its N vectors of length M (the rows of a (N, M) block: the columns of the
matrix being orthogonalised) in registers for the whole run. Round r of a sweep pairs vector j
with (2r - j) mod (N - 1), and vector r with N - 1 (the circle method: N - 1 rounds pair every two
vectors exactly once). A round fetches each vector's partner with `tl.gather` (a shuffle within
the program, no trip through memory), computes all N/2 rotations at once, one per pair (both
vectors of a pair compute the same one), and applies them. The squared norms are recomputed at
the start of each sweep and updated by each rotation in between, so a round reduces once (the
inner products), not three times. N and M must be powers of two: callers zero-pad, which adds only
zero singular values. Imported only where triton is (CUDA machines); needs triton >= 3.2.
"""

from __future__ import annotations

import triton
import triton.language as tl

EPS = tl.constexpr(1.2e-7)  # float32's unit roundoff (2**-23)


@triton.jit
def _jacobi_kernel(v_ptr, out_ptr, off_ptr, N: tl.constexpr, M: tl.constexpr, SWEEPS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    vec = tl.arange(0, N)
    v = tl.load(v_ptr + pid * N * M + vec[:, None] * M + tl.arange(0, M)[None, :])
    off = tl.zeros([N], dtype=tl.float32)
    for sweep in range(SWEEPS):
        norm2 = tl.sum(v * v, 1)
        scale = tl.sqrt(tl.max(norm2, 0))
        off = tl.zeros([N], dtype=tl.float32)  # what the last sweep could still change
        for r in range(N - 1):
            partner = tl.where(vec == N - 1, r, tl.where(vec == r, N - 1, (2 * r - vec + 2 * (N - 1)) % (N - 1)))
            p = tl.gather(v, tl.broadcast_to(partner[:, None], (N, M)), 0)
            gamma = tl.sum(v * p, 1)
            other2 = tl.gather(norm2, partner, 0)
            lower = vec < partner
            norm_p = tl.where(lower, norm2, other2)
            norm_q = tl.where(lower, other2, norm2)
            zeta = (norm_q - norm_p) / (2 * gamma)
            t = tl.where(zeta >= 0, 1.0, -1.0) / (tl.abs(zeta) + tl.sqrt(1 + zeta * zeta))
            # Pairs already orthogonal to working precision are left alone: rotating them only adds rounding.
            t = tl.where(tl.abs(gamma) <= EPS * tl.sqrt(norm_p * norm_q), 0.0, t)
            c = 1.0 / tl.sqrt(1 + t * t)
            s = c * t
            moved = tl.abs(gamma) / tl.maximum(tl.sqrt(tl.maximum(norm2, other2)) * scale, 1e-30)
            off = tl.maximum(off, tl.where(t == 0, 0.0, moved))
            v = tl.where(lower[:, None], c[:, None] * v - s[:, None] * p, s[:, None] * p + c[:, None] * v)
            # The rotation moves t * gamma of squared norm from the lower vector to the upper one.
            norm2 = tl.maximum(tl.where(lower, norm2 - t * gamma, norm2 + t * gamma), 0.0)
    tl.store(out_ptr + pid * N + vec, tl.sqrt(tl.sum(v * v, 1)))
    tl.store(off_ptr + pid, tl.max(off, 0))


def jacobi_row_norms(v, sweeps: int, warps: int | None = None):
    """(final row norms (B, N), off (B,)) of the Jacobi sweeps that orthogonalise the rows of
    `v` (B, N, M) float32, contiguous, N and M powers of two."""
    import torch

    b, n, m = v.shape
    out = torch.empty((b, n), device=v.device, dtype=torch.float32)
    off = torch.empty((b,), device=v.device, dtype=torch.float32)
    warps = warps or (2 if n * m <= 4096 else 4)  # the fastest on an H100 (benchmarks/bench_jacobi_tuning.py)
    _jacobi_kernel[(b,)](v, out, off, N=n, M=m, SWEEPS=sweeps, num_warps=warps)
    return out, off
