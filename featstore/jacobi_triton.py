"""One-sided Jacobi singular values in one Triton kernel: one program per matrix.

Each program holds its N vectors of length M (the rows of a (N, M) block: the columns of the
matrix being orthogonalised) in registers for the whole run. Round r of a sweep pairs vector j
with (2r - j) mod (N - 1), and vector r with N - 1 (the circle method: N - 1 rounds pair every two
vectors exactly once). A round fetches each vector's partner with `tl.gather` (a shuffle within
the program, no trip through memory), computes all N/2 rotations at once, one per pair (both
vectors of a pair compute the same one), and applies them. The squared norms are recomputed at
the start of each sweep and updated by each rotation in between, so a round reduces once (the
inner products), not three times. With QR (square blocks), the program first reduces its matrix A
to R by Householder reflections and sweeps the rows of R instead (Jacobi on R^T, preconditioned:
where A is rank-deficient they are nearly orthogonal already), in the same registers: torch's
batched QR as a separate launch cost as much as the sweeps. N and M must be powers of two:
callers zero-pad, which adds only zero singular values. It works in float32 or float64 (a
constexpr); featstore uses float64, whose rounding over the sweeps stays below float32's.
Imported only where triton is (CUDA machines); needs triton >= 3.2.
"""

from __future__ import annotations

import triton
import triton.language as tl

MACHINE_EPS = {"float32": 1.2e-7, "float64": 2.2e-16}  # of the working dtype: rotations below it are skipped


@triton.jit
def _jacobi_kernel(v_ptr, out_ptr, off_ptr, N: tl.constexpr, M: tl.constexpr, SWEEPS: tl.constexpr,
                   QR: tl.constexpr, DTYPE: tl.constexpr, EPS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    vec = tl.arange(0, N)
    v = tl.load(v_ptr + pid * N * M + vec[:, None] * M + tl.arange(0, M)[None, :]).to(DTYPE)
    # At unit scale: float32 squares underflow below ~1e-19 (1e-25 entries gave all-zero values
    # that looked converged) and overflow above ~1e19.
    unit = tl.max(tl.max(tl.abs(v), 1), 0)
    unit = tl.where(unit > 0, unit, 1.0)
    v = v / unit
    if QR:  # the rows of v are the columns of A (N == M): rotate them into R, then take its rows
        v = tl.trans(_householder_r(v, N))
    off = tl.zeros([N], dtype=DTYPE)
    for sweep in range(SWEEPS):
        norm2 = tl.sum(v * v, 1)
        scale = tl.sqrt(tl.max(norm2, 0))
        off = tl.zeros([N], dtype=DTYPE)  # what the last sweep could still change
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
    tl.store(out_ptr + pid * N + vec, tl.sqrt(tl.sum(v * v, 1)) * unit)
    tl.store(off_ptr + pid, tl.max(off, 0))


@triton.jit
def _householder_r(v, N: tl.constexpr):
    """R^T of A = QR, where the rows of the square block `v` are the columns of A: Householder
    reflections, each zeroing one column of A below the diagonal. Row j of the result is column j
    of R (zero beyond position j)."""
    pos = tl.arange(0, N)
    for k in range(N - 1):
        x = tl.sum(tl.where(pos[:, None] == k, v, 0.0), 0)  # column k of A
        x = tl.where(pos >= k, x, 0.0)
        head = tl.sum(tl.where(pos == k, x, 0.0), 0)
        norm = tl.sqrt(tl.sum(x * x, 0))
        alpha = tl.where(head > 0, -norm, norm)  # x -> alpha e_k, the sign that avoids cancellation
        u = x - tl.where(pos == k, alpha, 0.0)
        u2 = tl.sum(u * u, 0)
        scale = tl.where(u2 > 0, 2.0 / u2, 0.0)  # a zero column needs no reflection
        v = v - (scale * tl.sum(v * u[None, :], 1))[:, None] * u[None, :]
    return v


def jacobi_row_norms(v, sweeps: int, warps: int | None = None, qr: bool = False, dtype: str = "float32"):
    """(final row norms (B, N), off (B,)) of the Jacobi sweeps that orthogonalise the rows of
    `v` (B, N, M) float32 or float64, contiguous, N and M powers of two, working in `dtype`
    (float32 or float64; both results are float32). With `qr` (N == M), the sweeps run on the
    rows of R from the QR of each v^T instead: the same singular values, fewer sweeps."""
    import torch

    b, n, m = v.shape
    if qr and n != m:
        raise ValueError(f"the kernel's QR needs square blocks, got {n}x{m}")
    out = torch.empty((b, n), device=v.device, dtype=getattr(torch, dtype))  # norms in the working dtype
    off = torch.empty((b,), device=v.device, dtype=torch.float32)
    if not warps:  # the fastest on an H200 (results/jacobi-tuning-cuda-h200.txt): 2 up to 64x64 in either
        # dtype, then 4 for float32 128x128 and 8 for float64 (800 ms with 4: registers spill, 75 with 8)
        warps = 2 if n * m <= 4096 else min(16, n * m * (8 if dtype == "float64" else 4) // 16384)
    _jacobi_kernel[(b,)](v, out, off, N=n, M=m, SWEEPS=sweeps, QR=qr, DTYPE=getattr(tl, dtype),
                         EPS=MACHINE_EPS[dtype], num_warps=warps)
    return out, off
