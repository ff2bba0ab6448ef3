import numpy as np
import pytest
import torch

from featstore import presets
from featstore.svdvals import gram_svdvals, jacobi_svdvals, singular_values

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def lora(rows: int, dim: int, layer: int = 40) -> torch.Tensor:
    """Rows of one signal layer of a preset-like dataset: rank 4 + noise."""
    p = presets.Preset("t", rows=rows, layers=64, dim=dim, seed=3)
    y = presets.labels(p)
    return torch.from_numpy(np.concatenate([
        presets.layer_block(p, layer, a, min(a + presets.BLOCK_ROWS, rows), y[a : a + presets.BLOCK_ROWS])
        for a in range(0, rows, presets.BLOCK_ROWS)]))


def max_error(values: torch.Tensor, x: torch.Tensor) -> float:
    ref = np.linalg.svd(x.double().cpu().numpy(), compute_uv=False)
    return float((np.abs(values.double().cpu().numpy() - ref).max(1) / ref[:, 0]).max())


@pytest.mark.parametrize("shape", [(40, 64, 40), (40, 33, 70), (40, 35, 35), (10, 5, 3)])
def test_jacobi_matches_float64_on_random_matrices(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    values, off = jacobi_svdvals(x)
    assert values.shape == (shape[0], min(shape[1:]))
    assert max_error(values, x) < 1e-7 and off.max() < 1e-5


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-5), (torch.float64, 1e-7)])
@pytest.mark.parametrize("scale", [1e-25, 1e25])
def test_jacobi_at_extreme_scales(scale, dtype, tolerance):
    """float32 squares of 1e-25 underflow to zero: unscaled, every value came out 0, 'converged'."""
    x = lora(20, 64) * scale
    values, off = jacobi_svdvals(x, dtype=dtype)
    assert max_error(values, x) < tolerance and off.max() < 1e-5


def test_jacobi_on_rank_deficient_lora_deltas():
    """Working in float64 (the default), only the float32 result's rounding is left (6e-8 of
    s_max); float32's own rounding over 8 sweeps is ~100x that."""
    x = lora(64, 64)
    values, off = jacobi_svdvals(x)
    assert max_error(values, x) < 1e-7 and off.max() < 1e-5
    values, off = jacobi_svdvals(x, dtype=torch.float32)
    assert max_error(values, x) < 2e-5


def lora_factors(rows: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Rank 4 + 1e-3 noise of any shape (a LoRA factor's: 16 x 512, 512 x 16), as bench_shapes.py."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn((rows, shape[0], 4), generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn((rows, shape[1], 4), generator=g, dtype=torch.float64)).Q
    s = torch.rand((rows, 1), generator=g, dtype=torch.float64) + 0.5 * 0.5 ** torch.arange(4)
    noise = 1e-3 * torch.randn((rows, *shape), generator=g, dtype=torch.float64)
    return ((u * s[:, None, :]) @ v.mT + noise).to(torch.float32)


@pytest.mark.parametrize("shape", [(16, 512), (512, 16), (33, 70), (4, 300)])
def test_kernel_on_the_gram_matrix_of_far_from_square_matrices(shape):
    """The route a GPU takes for LoRA factors, here through the kernel's reference loop: within
    1e-7 of s_max, rank-deficient or random, and converged by the kernel's own measure."""
    import featstore.svdvals as sv

    for x in (lora_factors(40, shape), torch.randn((40, *shape), generator=torch.Generator().manual_seed(1))):
        values, off = sv._gram_jacobi(x)
        assert values.shape == (40, min(shape)) and values.dtype == torch.float32
        assert max_error(values, x) < 1e-7 and off.max() < 1e-5


def test_gram_route_is_accurate():
    x = lora(32, 64)
    assert max_error(gram_svdvals(x), x) < 1e-6


def test_cpu_route_is_float64_gram_in_blocks_split_over_threads(monkeypatch):
    import featstore.svdvals as sv

    x = lora(301, 64)
    torch.testing.assert_close(singular_values(x), gram_svdvals(x), rtol=0, atol=0)  # same bits
    monkeypatch.setattr(sv, "CPU_BLOCK_BYTES", 5 * 64 * 64 * 8)  # blocks of 5 matrices
    torch.testing.assert_close(singular_values(x), gram_svdvals(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["lora", "random", "tiny", "huge", "wide", "rank-1"])
def test_cpu_route_is_more_accurate_than_float32_lapack(kind):
    """Within 1e-7 of s_max against float64, where float32 gesdd errs by 3e-7 to 1e-6."""
    g = torch.Generator().manual_seed(1)
    x = {"lora": lambda: lora(100, 64), "random": lambda: torch.randn(100, 32, 32, generator=g),
         "tiny": lambda: lora(50, 64) * 1e-30, "huge": lambda: lora(50, 64) * 1e30,
         "wide": lambda: torch.randn(100, 12, 70, generator=g),
         "rank-1": lambda: torch.randn(100, 40, 1, generator=g) @ torch.randn(100, 1, 40, generator=g)}[kind]()
    assert max_error(singular_values(x), x) < 1e-7


def test_cpu_route_falls_back_to_lapack_if_eigvalsh_fails(monkeypatch):
    import featstore.svdvals as sv

    def fails(x):
        raise torch.linalg.LinAlgError("eigvalsh: did not converge")

    monkeypatch.setattr(sv, "gram_svdvals", fails)
    x = lora(40, 16)
    torch.testing.assert_close(singular_values(x), torch.linalg.svdvals(x), rtol=0, atol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_route_leaves_torch_thread_count_as_it_found_it(threads, monkeypatch):
    import featstore.svdvals as sv

    monkeypatch.setattr("featstore.device.cpu_count", lambda: 4)  # the split runs even on one core
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        calls = []
        monkeypatch.setattr(sv, "_pool", lambda n: calls.append(n) or sv.ThreadPoolExecutor(n))
        x = lora(40, 16)
        torch.testing.assert_close(singular_values(x), gram_svdvals(x), rtol=0, atol=0)
        assert calls == [4] and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("running, chunks", [(0, 4), (1, 2), (3, 1)])
def test_cpu_calls_running_at_once_share_the_cores(running, chunks, monkeypatch):
    import featstore.svdvals as sv

    monkeypatch.setattr("featstore.device.cpu_count", lambda: 4)
    monkeypatch.setattr(sv, "_calls", [running])  # other calls running: a CPU build's compute lanes
    split = []
    monkeypatch.setattr(sv, "_pool", lambda n: type("Pool", (), {"map": lambda self, f, xs: split.append(len(xs))
                                                                  or [f(x) for x in xs]})())
    x = lora(40, 16)
    torch.testing.assert_close(singular_values(x), gram_svdvals(x), rtol=0, atol=0)
    assert split == ([chunks] if chunks > 1 else []) and sv._calls == [running]


@cuda
@pytest.mark.parametrize("dim", [1, 2, 3, 5, 8, 16, 32, 64, 128])
def test_gpu_singular_values_match_float64(dim):
    """Exact to float32 precision, as the CPU route is: within 1e-7 of s_max (the featurizers
    issue asks this of the GPU kernel on rank-deficient inputs)."""
    import featstore.svdvals as sv

    x = lora(1000, max(dim, 8))[:, :dim, :dim].cuda()  # the presets need 4+ wide (rank 4)
    assert max_error(singular_values(x), x) < 1e-7
    assert sv._triton_failed == []  # the kernel compiled for this width


@cuda
@pytest.mark.parametrize("dim", [64, 128])
def test_gpu_jacobi_kernel_on_rank_deficient_and_random_inputs(dim):
    x = lora(300, dim).cuda()
    values, off = jacobi_svdvals(x)
    assert max_error(values, x) < 1e-7 and off.max() < 1e-5
    x = torch.randn(300, dim, dim, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    assert max_error(singular_values(x), x) < 1e-7  # what the kernel leaves unconverged goes to Gram


@cuda
@pytest.mark.parametrize("dim", [16, 64, 128])
def test_gpu_kernel_in_float32_still_converges(dim):
    """The kernel's float32 mode (faster, 4.5e-6 of s_max at 64 wide): kept for measurement."""
    x = lora(300, dim).cuda()
    values, off = jacobi_svdvals(x, dtype=torch.float32)
    assert max_error(values, x) < 2e-5 and off.max() < 1e-5


@cuda
@pytest.mark.parametrize(("shape", "fused"), [((300, 64, 64), True), ((300, 48, 48), True), ((300, 40, 64), True),
                                              ((300, 33, 70), False), ((300, 100, 100), True),
                                              ((300, 5, 5), True), ((300, 8, 8), True), ((300, 12, 9), True)])
def test_gpu_kernel_qr_matches_the_torch_qr_route(shape, fused, monkeypatch):
    """Square blocks (after padding to powers of two) take the kernel's own QR; others torch's.
    Either way the kernel agrees with its reference, the same sweeps in torch on the CPU."""
    import featstore.jacobi_triton as jt

    calls, real = [], jt.jacobi_row_norms
    monkeypatch.setattr(jt, "jacobi_row_norms", lambda *a, **k: calls.append(k["qr"]) or real(*a, **k))
    x = lora(shape[0], max(shape[1:]))[:, : shape[1], : shape[2]].cuda()
    values, off = jacobi_svdvals(x)
    reference, _ = jacobi_svdvals(x.cpu())  # torch's QR, then the loop the kernel follows
    assert calls == [fused]
    assert max_error(values, x) < 1e-7 and off.max() < 1e-5
    torch.testing.assert_close(values.cpu(), reference, rtol=0, atol=1e-7 * float(reference[:, 0].max()))


@cuda
@pytest.mark.parametrize(("shape", "gram"), [((16, 4096), True), ((4096, 16), True), ((64, 1024), True),
                                             ((8, 2048), True), ((33, 70), True), ((40, 64), False), ((64, 64), False)])
def test_gpu_far_from_square_matrices_take_the_kernel_on_their_gram_matrix(shape, gram, monkeypatch):
    """LoRA factors: torch's batched QR before the kernel took 106 ms per 1000 16 x 4096 on an
    H200, the kernel on their Gram matrices 0.7 ms (results/shapes-cuda-h200.txt)."""
    import featstore.jacobi_triton as jt
    import featstore.svdvals as sv

    shapes, real = [], jt.jacobi_row_norms
    monkeypatch.setattr(jt, "jacobi_row_norms", lambda v, *a, **k: shapes.append((v.dtype, v.shape[1:], k["qr"]))
                        or real(v, *a, **k))
    x = lora_factors(500, shape).cuda()
    assert max_error(sv.singular_values(x), x) < 1e-7 and sv._triton_failed == []
    width = sv._pow2(min(shape))
    assert shapes == [(torch.float64, (width, width), True)] if gram else shapes[0][2]
    if gram:
        torch.testing.assert_close(sv._gram_jacobi(x)[0].cpu(), sv._gram_jacobi(x.cpu())[0], rtol=0,
                                   atol=1e-7 * float(x.norm(dim=(1, 2)).max()))  # the kernel's reference


@cuda
@pytest.mark.parametrize("scale", [1e-25, 1e-18, 1e18, 1e25])
def test_gpu_singular_values_at_extreme_scales(scale):
    x = lora(300, 64).cuda() * scale
    values, off = jacobi_svdvals(x)
    assert max_error(values, x) < 1e-7 and off.max() < 1e-5
    values, off = jacobi_svdvals(x, dtype=torch.float32)  # float32 squares of 1e-25 underflow unscaled
    assert max_error(values, x) < 2e-5 and off.max() < 1e-5
    assert max_error(singular_values(x), x) < 1e-7


@cuda
def test_gpu_gesvda_failure_goes_to_jacobi(monkeypatch):
    import featstore.svdvals as sv

    monkeypatch.setattr(sv, "_checked_gesvda", lambda x: None)  # as if the batch failed to converge
    x = lora(300, 128).cuda()
    assert max_error(sv.singular_values(x), x) < 1e-7


@cuda
def test_gpu_unconverged_jacobi_falls_back_to_gram(monkeypatch):
    import featstore.svdvals as sv

    monkeypatch.setattr(sv, "JACOBI_SWEEPS", 1)  # cannot converge in one sweep
    x = lora(200, 64).cuda()
    assert max_error(sv._jacobi_then_gram(x), x) < 1e-6


def test_frobenius_check_flags_wrong_values():
    import featstore.svdvals as sv

    x = lora(8, 64)
    good = torch.linalg.svdvals(x)
    wrong = good.clone()
    wrong[3, 0] *= 1.01
    assert sv._frobenius_mismatch(x, good).tolist() == [False] * 8
    assert sv._frobenius_mismatch(x, wrong).tolist() == [i == 3 for i in range(8)]


@cuda
def test_gpu_unusable_triton_kernel_falls_back_to_gram(monkeypatch):
    import featstore.svdvals as sv

    def broken(*args, **kwargs):
        raise RuntimeError("cannot compile")

    monkeypatch.setattr(sv, "jacobi_svdvals", broken)
    monkeypatch.setattr(sv, "_triton_failed", [])
    x = lora(100, 64).cuda()
    assert max_error(sv.singular_values(x), x) < 1e-6 and sv._triton_failed == ["RuntimeError('cannot compile')"]


@cuda
def test_gpu_out_of_memory_in_the_kernel_is_not_taken_for_a_broken_kernel(monkeypatch):
    import featstore.svdvals as sv

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(sv, "jacobi_svdvals", oom)
    monkeypatch.setattr(sv, "_triton_failed", [])
    with pytest.raises(torch.cuda.OutOfMemoryError):  # the build halves its batch on this
        sv.singular_values(lora(10, 64).cuda())
    assert sv._triton_failed == []
