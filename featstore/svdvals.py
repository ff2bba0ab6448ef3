"""Batched singular values of many small matrices, robust and fast on every device.

`singular_values(x)` returns (n, min(rows, cols)) float32, descending. Routes, chosen by
measurement (benchmarks/bench_svdvals.py, bench_jacobi_tuning.py):
- CPU: float64 Gram + `eigvalsh` (LAPACK syevd), in blocks of 8 MB, the batch split over the
  cores, shared out among the calls running at once (LAPACK's batched routines use one thread
  each). On 2 cores, 1000 x dxd: 1.4-1.75x faster than `torch.linalg.svdvals` (gesdd) split the
  same way, from d = 8 to 128 (80 vs 129 ms at 64), and more accurate on float32 input (6e-8 vs
  5e-7 - 1.2e-6 of s_max): results/svdvals-cpu.txt. On 16 cores (an H200 host) 1.5x faster at
  64 and 128 wide, even at 32, slower at 16 (6.2 vs 2.7 ms per 1000, 3 batches: a few ms either
  way). Squaring costs at most ~sqrt(float64 eps) = 1.5e-8 of s_max, below float32's rounding.
- CUDA, 2 to 64 wide: `jacobi_svdvals`, our one-sided Jacobi (a Triton kernel that keeps each
  matrix in registers, QR first), working in float64. On an H200, 1000 x 64x64 in 4.1 ms with an
  error of 6e-8 of s_max, the rounding of the float32 result, as float64 Gram (320 ms) and
  gesvda reach; float32 work took 1.4 ms but erred by 4.5e-6, 8 sweeps of float32 rounding
  (results/svdvals-cuda-h200.txt, jacobi-tuning-cuda-h200.txt). From 4 to 32 wide 0.31-0.63 ms
  per 1000 with the checks, against torch's default 0.33-1.27 ms at 1.8e-6 - 9.4e-6. It reports
  its own convergence; what it leaves unconverged goes to float64 Gram + `eigvalsh`, robust but
  slow on the GPU. It goes before a checked gesvda (3.0 ms at 64 when that converges), which fails on
  rank-deficient batches (the featurizers issue saw 14 of 20 fail). 1 wide: the Gram route.
- CUDA, far from square (sides that differ once rounded up to powers of two: LoRA factors, 16 x
  4096): the same kernel on each float64 Gram matrix, whose singular values are sigma^2
  (`_gram_jacobi`): 0.82 ms per 1000 16 x 4096 on an H200, 6.9 ms per 1000 64 x 4096, against
  106 and 412 ms with torch's batched QR before the kernel, at 5.5e-8 (results/shapes-cuda-h200.txt).
- CUDA, wider: cuSOLVER's `gesvda` (11 ms per 1000 128x128, 6e-8) is faster than the Jacobi
  there (77 ms), but it fails to converge on some rank-deficient batches (raising) and each result
  must match its matrix's Frobenius norm: *checked*, and what fails goes to the Jacobi (up to 128
  wide), then to the Gram route. The default `torch.linalg.svdvals` takes 1.0 s per 1000 64x64.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

JACOBI_FIRST_MAX_WIDTH = 64  # up to this width our Jacobi goes first: it never fails, gesvda does
TRITON_MAX_WIDTH = 128  # the Triton kernel keeps a matrix in registers; wider ones spill
JACOBI_SWEEPS = 8  # in float64, 6 left Gaussian 64x64 matrices at 7e-7 of s_max, 8 at 6e-8
JACOBI_DTYPE = "float64"  # the kernel's working dtype: float32 rounding over the sweeps erred by 4.5e-6
JACOBI_TOLERANCE = 1e-5  # largest change a further rotation could make, relative to s_max
CPU_BLOCK_BYTES = 8 << 20  # float64 matrices per Gram block on the CPU
FROBENIUS_TOLERANCE = 1e-4  # | sum s^2 / ||A||_F^2 - 1 | accepted from gesvda
_triton_failed: list[str] = []  # why the Triton kernel failed in this process, if it did
_prefetching: list[threading.Thread] = []  # prefetch_triton's thread, once started


def singular_values(x):
    """Singular values of each matrix in `x` (n, rows, cols), float32, descending."""
    import torch

    x = x.to(torch.float32)
    if x.device.type != "cuda":
        return _cpu_svdvals(x)
    if min(x.shape[1:]) <= 1 or len(x) == 0:  # a vector's norm
        return gram_svdvals(x)
    if min(x.shape[1:]) <= JACOBI_FIRST_MAX_WIDTH:
        return _jacobi_then_gram(x)
    values = _checked_gesvda(x)
    bad = torch.ones(len(x), dtype=torch.bool, device=x.device) if values is None else _frobenius_mismatch(x, values)
    if bad.any():
        values = torch.empty((len(x), min(x.shape[1:])), device=x.device) if values is None else values
        values[bad] = _jacobi_then_gram(x[bad])
    return values


def _cpu_svdvals(x, route=None):
    """`cpu_gram_svdvals` (or `route`), the batch split over the cores: LAPACK's batched routines
    run on one thread however many torch has (800 x 64x64 svdvals: 126 ms with 2 threads or 1),
    and two halves in two threads take half the time (measured on 2 cores). Each matrix's values
    are the same bits. Calls running at once (a CPU build's compute lanes) share the cores out: a
    column computed alone (one layer changed) gets every core, sixteen lanes on sixteen cores one
    each (splitting each lane's batch sixteen ways there: 1.07 s for 80 columns against 0.85 s,
    separate runs)."""
    import torch

    route = route or cpu_gram_svdvals

    from featstore.device import cpu_count

    with _calls_lock:
        _calls[0] += 1
        share = max(1, cpu_count() // _calls[0])
    try:
        if share < 2 or len(x) < 2 * share:
            return route(x)
        before = torch.get_num_threads()  # 1 in a CPU build's compute lanes (device.intra_op_threads)
        # Concurrent calls queue on torch's intra-op pool unless each runs single-threaded.
        if before != 1:
            torch.set_num_threads(1)
        try:
            return torch.cat(list(_pool(cpu_count()).map(route, x.chunk(share))))
        finally:
            if before != 1:
                torch.set_num_threads(before)
    finally:
        with _calls_lock:
            _calls[0] -= 1


_calls = [0]  # _cpu_svdvals calls running now
_calls_lock = threading.Lock()


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count, kept: starting threads per call cost ~1 s of a 10%-append rebuild."""
    return ThreadPoolExecutor(threads, "featstore-svdvals")


def prefetch_triton() -> None:
    """Start, in a thread, the part of the Triton kernel's first launch in a process that needs
    neither torch nor the GPU: importing triton and computing its cache key, for which Triton
    hashes its own library files (0.36 s of the first launch's 0.53 s on an H200 host:
    results/first-call-profile-cuda-h200.txt), mostly outside the GIL. A GPU build calls this
    just before it imports torch (1.2 s), which the hashing overlaps; the kernel's first launch
    waits for the thread rather than hash the same files again. Once per process; nothing where
    triton is not installed. Where `auto` then finds no GPU, the thread's work is wasted: one
    core for ~0.4 s, beside the 1.2 s import."""
    with _calls_lock:
        if _prefetching or importlib.util.find_spec("triton") is None:
            return
        _prefetching.append(threading.Thread(target=_triton_key, name="featstore-triton", daemon=True))
        _prefetching[0].start()  # under the lock: a thread that finds it listed may join it


def _triton_key() -> None:
    try:
        try:
            from triton.runtime.cache import triton_key  # where triton 3.6 keeps it; cached for the process
        except ImportError:
            from triton.compiler.compiler import triton_key  # older ones; torch's inductor tries both
        triton_key()
    except Exception as e:  # noqa: BLE001 (a Triton internal: if it moved, the first launch pays as before)
        log.debug("could not prefetch Triton's cache key: %r", e)


def _checked_gesvda(x):
    import torch

    try:
        values = torch.linalg.svdvals(x, driver="gesvda")
    except RuntimeError as e:  # "failed to converge": the batch goes to the Jacobi route
        log.info("gesvda failed on a batch of %d: %s", len(x), str(e).splitlines()[0])
        return None
    return values


def _frobenius_mismatch(x, values):
    import torch

    frob = x.to(torch.float64).square().sum((1, 2))
    got = values.to(torch.float64).square().sum(1)
    return ~torch.isfinite(got) | ((got - frob).abs() > FROBENIUS_TOLERANCE * frob.clamp_min(1e-300))


def _jacobi_then_gram(x):
    import torch

    if min(x.shape[1:]) > TRITON_MAX_WIDTH or _triton_failed:
        return gram_svdvals(x)
    square = _pow2(x.shape[1]) == _pow2(x.shape[2])  # once padded: the kernel does its own QR
    try:
        values, off = jacobi_svdvals(x, sweeps=JACOBI_SWEEPS) if square else _gram_jacobi(x)
    except torch.cuda.OutOfMemoryError:
        raise  # the build halves the batch and retries
    except Exception as e:  # no triton, or one that cannot compile the kernel: the robust route instead
        if x.device.type != "cuda":
            raise
        _triton_failed.append(repr(e))
        log.warning("the Triton Jacobi kernel is unusable here (%s); singular values go to float64 Gram + "
                    "eigvalsh, robust but ~100x slower", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return gram_svdvals(x)
    unconverged = (off > JACOBI_TOLERANCE) | ~torch.isfinite(values).all(1)
    if unconverged.any():
        log.info("jacobi svdvals: %d of %d matrices unconverged; using float64 Gram + eigvalsh",
                 int(unconverged.sum()), len(x))
        values[unconverged] = gram_svdvals(x[unconverged])
    return values


def _gram_jacobi(x):
    """(values, off) as `jacobi_svdvals` gives them, for matrices far from square (a LoRA factor,
    16 x 4096): the kernel on each float64 Gram matrix (square, as wide as the shorter side), whose
    singular values are the eigenvalues sigma^2. On an H200, 1000 x 16x4096 in 0.70 ms against
    106 ms with torch's batched QR first, 4096x64 in 5.6 against 413 ms
    (results/shapes-cuda-h200.txt). Squaring costs at most ~sqrt(float64 eps) = 1.5e-8 of s_max,
    as on the CPU route. The kernel's `off`, its measure for sigma^2, becomes its square root, the
    bound it gives for sigma: so two more sweeps (after 8, rank-4 + noise 64 x 1024 matrices were
    left at 5e-7 for sigma^2, 7e-4 for sigma, their values already within 6e-8; after 10, 1e-16)."""
    import torch

    a = x.to(torch.float64)
    gram = a.mT @ a if a.shape[1] >= a.shape[2] else a @ a.mT
    squares, off = _jacobi(gram, JACOBI_SWEEPS + 2, True, torch.float64)
    return squares.clamp_min(0).sqrt().to(torch.float32), off.sqrt().to(torch.float32)


def cpu_gram_svdvals(x):
    """`gram_svdvals` in blocks of ~8 MB of float64: a whole column at once would hold two
    float64 copies of it (a Gram matrix per row can be as large as the row)."""
    from featstore.device import in_blocks

    return in_blocks(_gram_or_lapack, x, CPU_BLOCK_BYTES)


def _gram_or_lapack(x):
    import torch

    try:
        return gram_svdvals(x)
    except RuntimeError:  # eigvalsh did not converge (never seen; NaN or inf input fails either way)
        return torch.linalg.svdvals(x)


def gram_svdvals(x):
    """sqrt of the eigenvalues of the float64 Gram matrix: robust on any input, slow on the GPU."""
    import torch

    a = x.to(torch.float64)
    gram = a.mT @ a if a.shape[1] >= a.shape[2] else a @ a.mT
    eig = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    return eig.flip(1).to(torch.float32)


def jacobi_svdvals(x, sweeps: int = JACOBI_SWEEPS, precondition: bool = True, dtype=None):
    """One-sided Jacobi, working in `dtype` (torch.float64 or float32; default JACOBI_DTYPE):
    (values (n, min(r, c)) float32, descending; off (n,) the largest change a further rotation
    could still make, relative to s_max: a convergence measure).

    With `precondition`, the Jacobi runs on R^T from A = QR: the same singular values, but the
    columns of R^T are already nearly orthogonal where A is rank-deficient, so it converges in
    ~8 sweeps instead of 12+ on rank-4 + noise inputs (measured, benchmarks/bench_svdvals.py).
    """
    import torch

    values, off = _jacobi(x, sweeps, precondition, dtype or getattr(torch, JACOBI_DTYPE))
    return values.to(torch.float32), off.to(torch.float32)


def _jacobi(x, sweeps: int, precondition: bool, work_dtype):
    """`jacobi_svdvals`, its values in `work_dtype`."""
    import torch

    a = x if x.shape[1] >= x.shape[2] else x.mT  # rotate the fewer, longer vectors
    width = a.shape[2]
    if a.device.type == "cuda":  # the Triton kernel; the loop below is its reference
        if _prefetching:
            _prefetching[0].join()
        from featstore.jacobi_triton import jacobi_row_norms

        n, m = _pow2(width), _pow2(a.shape[1])
        # The kernel's own QR (square blocks), in registers: in float32, 1000 x 64x64 in 1.4
        # instead of 2.5 ms, 200 in 0.6 instead of 1.6 ms (torch's batched QR alone takes
        # 1.2-1.3 ms for either). The kernel converts its input as it loads it.
        fused = precondition and n == m
        if precondition and not fused:
            a, m = torch.linalg.qr(a.to(work_dtype), mode="r").R.mT, n
        v = a.mT  # the vectors to orthogonalise, as rows
        v = torch.nn.functional.pad(v, (0, m - v.shape[2], 0, n - v.shape[1])).contiguous()
        norms, off = jacobi_row_norms(v, sweeps, qr=fused, dtype=str(work_dtype).removeprefix("torch."))
    else:
        # At unit scale, as the kernel works: float32 squares underflow below ~1e-19 (1e-25
        # entries gave all-zero values that looked converged) and overflow above ~1e19.
        a = a.to(work_dtype)
        scale = a.abs().amax((1, 2))
        scale = torch.where(scale > 0, scale, 1.0)[:, None]
        a = a / scale[:, :, None]
        if precondition:
            a = torch.linalg.qr(a, mode="r").R.mT
        if width % 2:
            a = torch.nn.functional.pad(a, (0, 1))
        out, off = _sweeps(a.contiguous(), _round_robin(a.shape[2], a.device), sweeps)
        norms = out.norm(dim=1) * scale
    return norms.sort(dim=1, descending=True).values[:, :width], off  # drops padding columns


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


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
            eps = torch.finfo(a.dtype).eps  # pairs orthogonal to working precision are left alone
            t = torch.where(gamma.abs() <= eps * (alpha * beta).sqrt(), 0.0, torch.nan_to_num(t, nan=0.0))
            c = torch.rsqrt(1 + t * t)
            s = c * t
            c, s = c[:, None, :], s[:, None, :]
            a = torch.cat([c * p - s * q, s * p + c * q], dim=2)[:, :, perm]
    return a, off
