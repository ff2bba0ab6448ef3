"""Batched singular values of many small matrices, robust and fast on every device.

`singular_values(x)` returns (n, min(rows, cols)) float32, descending. Routes:
- CPU: `torch.linalg.svdvals` (LAPACK gesdd), robust and already the fastest there.
- CUDA, matrices up to 32 wide: `torch.linalg.svdvals` (cuSOLVER's batched Jacobi, ~1 ms per 1000).
- CUDA, wider: `jacobi_svdvals` below, a one-sided (Hestenes) Jacobi in vectorised torch: every
  round rotates all n/2 disjoint column pairs of every matrix at once, in round-robin order, so a
  sweep is n-1 rounds; a fixed number of sweeps is captured once as a CUDA graph and replayed.
  The library routes are either slow on rank-deficient LoRA deltas (default svdvals: 1.1 s per
  1000 64x64) or fail to converge on them (gesvda: 14 of 20 batches); see the featurizers issue.
  Its result is checked (orthogonality of the rotated columns); an unconverged batch falls back
  to float64 Gram + `eigvalsh`, which is slow but robust (error ~3e-8 of s_max).
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)

JACOBI_MIN_WIDTH = 33  # below this, cuSOLVER's batched Jacobi (torch's default on CUDA) is fast
JACOBI_SWEEPS = 8
JACOBI_TOLERANCE = 1e-5  # max |cos| between rotated columns accepted as converged (fp32)


def singular_values(x):
    """Singular values of each matrix in `x` (n, rows, cols), float32, descending."""
    import torch

    x = x.to(torch.float32)
    if x.device.type != "cuda" or min(x.shape[1:]) < JACOBI_MIN_WIDTH or len(x) == 0:
        return torch.linalg.svdvals(x)
    values, off = jacobi_svdvals(x, sweeps=JACOBI_SWEEPS)
    bad = off > JACOBI_TOLERANCE
    if bad.any():
        log.warning("jacobi svdvals: %d of %d matrices unconverged; using float64 Gram + eigvalsh",
                    int(bad.sum()), len(x))
        values[bad] = gram_svdvals(x[bad])
    return values


def gram_svdvals(x):
    """sqrt of the eigenvalues of the float64 Gram matrix: robust on any input, slow on the GPU."""
    import torch

    a = x.to(torch.float64)
    gram = a.mT @ a if a.shape[1] >= a.shape[2] else a @ a.mT
    eig = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    return eig.flip(1).to(torch.float32)


def jacobi_svdvals(x, sweeps: int = JACOBI_SWEEPS, precondition: bool = True, dtype=None, kernel: str = "triton"):
    """One-sided Jacobi: (values (n, min(r, c)) descending, off (n,) the largest change a further
    rotation could still make, relative to s_max: a convergence measure).

    With `precondition`, the Jacobi runs on R^T from A = QR: the same singular values, but the
    columns of R^T are already nearly orthogonal where A is rank-deficient, so it converges in
    ~8 sweeps instead of 12+ on rank-4 + noise inputs (measured, benchmarks/bench_svdvals.py).
    """
    import torch

    work_dtype = dtype or torch.float32
    a = x if x.shape[1] >= x.shape[2] else x.mT  # rotate the fewer, longer vectors
    width = a.shape[2]
    a = a.to(work_dtype)
    if precondition:
        a = torch.linalg.qr(a, mode="r").R.mT
    if width % 2:
        a = torch.nn.functional.pad(a, (0, 1))
    a = a.contiguous()
    if a.device.type == "cuda" and kernel == "triton":
        from featstore.jacobi_triton import jacobi_column_norms

        rows, cols = (1 << (a.shape[1] - 1).bit_length(), 1 << (a.shape[2] - 1).bit_length())
        padded = torch.nn.functional.pad(a.to(torch.float32), (0, cols - a.shape[2], 0, rows - a.shape[1]))
        norms, off = jacobi_column_norms(padded.contiguous(), sweeps)
    elif a.device.type == "cuda":
        out, off = _graphed(tuple(a.shape), a.dtype, a.device, sweeps)(a)
        norms, off = out.norm(dim=1), off.clone()
    else:
        out, off = _sweeps(a, _round_robin(a.shape[2], a.device), sweeps)
        norms = out.norm(dim=1)
    values = norms.sort(dim=1, descending=True).values[:, :width]  # drops padding columns
    return values.to(torch.float32), off.to(torch.float32)


def _round_robin(n: int, device):
    """Column permutation after each round: with pairs (i, i + n/2), keep column 0 fixed and
    rotate the rest, so that n-1 rounds pair every two columns exactly once."""
    import torch

    h = n // 2
    top, bottom = list(range(h)), list(range(h, n))
    new_top = [top[0], bottom[0]] + top[1 : h - 1]
    new_bottom = bottom[1:] + [top[h - 1]]
    return torch.tensor(new_top + new_bottom, device=device)


def _sweeps(a, perm, sweeps: int):
    import torch

    h = a.shape[2] // 2
    tiny = torch.finfo(a.dtype).tiny
    off = torch.zeros(a.shape[0], device=a.device, dtype=a.dtype)
    for sweep in range(sweeps):
        scale = (a * a).sum(1).amax(1).sqrt()[:, None]
        for _ in range(a.shape[2] - 1):
            p, q = a[:, :, :h], a[:, :, h:]
            alpha, beta, gamma = (p * p).sum(1), (q * q).sum(1), (p * q).sum(1)
            if sweep == sweeps - 1:
                # A rotation of size |gamma| moves the smaller norm by about |gamma| / larger norm:
                # this measures the absolute error still possible, relative to s_max.
                moved = gamma.abs() / (torch.maximum(alpha, beta).sqrt() * scale).clamp_min(tiny)
                off = torch.maximum(off, moved.amax(1))
            zeta = (beta - alpha) / (2 * gamma)
            t = torch.where(zeta >= 0, 1.0, -1.0) / (zeta.abs() + torch.sqrt(1 + zeta * zeta))
            t = torch.where(gamma == 0, 0.0, torch.nan_to_num(t, nan=0.0))
            c = torch.rsqrt(1 + t * t)
            s = c * t
            c, s = c[:, None, :], s[:, None, :]
            a = torch.cat([c * p - s * q, s * p + c * q], dim=2)[:, :, perm]
    return a, off


@functools.lru_cache(maxsize=8)
def _graphed(shape: tuple[int, ...], dtype, device, sweeps: int):
    """The sweeps for one input shape, captured as a CUDA graph: ~8 kernels x (n-1) rounds x sweeps
    launch as one."""
    import torch

    static_in = torch.zeros(shape, device=device, dtype=dtype)
    perm = _round_robin(shape[2], device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        _sweeps(static_in, perm, 1)  # warm-up outside capture, as CUDA graphs require
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_off = _sweeps(static_in, perm, sweeps)

    def run(a, keep=(perm, graph)):  # the graph reads perm's memory: it must outlive the graph
        static_in.copy_(a)
        graph.replay()
        return static_out, static_off

    return run
