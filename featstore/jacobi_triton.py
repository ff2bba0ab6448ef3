"""One-sided Jacobi singular values in one Triton kernel: one program per matrix.

Each program holds its (M, N) matrix in registers for the whole run. Round r of a sweep pairs
column j with (2r - j) mod (N - 1), and column r with N - 1 (the circle method: N - 1 rounds pair
every two columns exactly once, no permutation needed). A round fetches every column's partner
through a per-matrix scratch copy (a CTA-local round trip through L1/L2), computes all N/2 Jacobi
rotations at once and applies them. M and N must be powers of two: callers zero-pad, which adds
only zero singular values. Imported only where triton is (CUDA machines).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _jacobi_kernel(a_ptr, scratch_ptr, out_ptr, off_ptr, M: tl.constexpr, N: tl.constexpr, SWEEPS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, M)
    cols = tl.arange(0, N)
    offsets = pid * M * N + rows[:, None] * N + cols[None, :]
    a = tl.load(a_ptr + offsets)
    off = tl.zeros([N], dtype=tl.float32)
    for sweep in range(SWEEPS):
        scale = tl.sqrt(tl.max(tl.sum(a * a, 0), 0))
        off = tl.zeros([N], dtype=tl.float32)  # what the last sweep could still change
        for r in range(N - 1):
            partner = tl.where(cols == N - 1, r, tl.where(cols == r, N - 1, (2 * r - cols + 2 * (N - 1)) % (N - 1)))
            tl.store(scratch_ptr + offsets, a)
            tl.debug_barrier()
            p = tl.load(scratch_ptr + pid * M * N + rows[:, None] * N + partner[None, :])
            tl.debug_barrier()  # every partner read before the next round overwrites the scratch
            alpha = tl.sum(a * a, 0)
            beta = tl.sum(p * p, 0)
            gamma = tl.sum(a * p, 0)
            lower = cols < partner
            norm_p = tl.where(lower, alpha, beta)
            norm_q = tl.where(lower, beta, alpha)
            zeta = (norm_q - norm_p) / (2 * gamma)
            t = tl.where(zeta >= 0, 1.0, -1.0) / (tl.abs(zeta) + tl.sqrt(1 + zeta * zeta))
            t = tl.where(gamma == 0, 0.0, t)
            c = 1.0 / tl.sqrt(1 + t * t)
            s = c * t
            moved = tl.abs(gamma) / tl.maximum(tl.sqrt(tl.maximum(alpha, beta)) * scale, 1e-30)
            off = tl.maximum(off, tl.where(gamma == 0, 0.0, moved))
            a = tl.where(lower[None, :], c[None, :] * a - s[None, :] * p, s[None, :] * p + c[None, :] * a)
    tl.store(out_ptr + pid * N + cols, tl.sqrt(tl.sum(a * a, 0)))
    tl.store(off_ptr + pid, tl.max(off, 0))


def jacobi_column_norms(a, sweeps: int):
    """(final column norms (B, N), off (B,)) of the Jacobi sweeps over `a` (B, M, N) float32,
    contiguous, M and N powers of two."""
    import torch

    b, m, n = a.shape
    out = torch.empty((b, n), device=a.device, dtype=torch.float32)
    off = torch.empty((b,), device=a.device, dtype=torch.float32)
    scratch = torch.empty_like(a)
    warps = 4 if m * n <= 4096 else 8
    _jacobi_kernel[(b,)](a, scratch, out, off, M=m, N=n, SWEEPS=sweeps, num_warps=warps)
    return out, off
