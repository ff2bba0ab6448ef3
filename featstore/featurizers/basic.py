"""Built-in featurizers that need no decomposition: `raw`, `stats`, `norms`, `randproj`.

torch is imported inside each function so that planning a build, `ls` and `--help` never pay for it.
Accuracy against a float64 NumPy reference is tested in tests/test_featurizers.py.
"""

from __future__ import annotations

import functools

from featstore.errors import SpecError
from featstore.featurizers import featurizer

FLOAT64_BLOCK_BYTES = 4 << 20  # rows widened to float64 at once on the CPU (device.in_blocks)


@featurizer("raw", version="1", output_shape=lambda shape: shape)
def raw(x):
    """The values themselves, as float32. Output (n, *value_shape)."""
    import torch

    return x.to(torch.float32)


# version 2: float16 columns are summed in float32 (version 1 summed them in float16: 4e-4 off)
@featurizer("stats", version="2", output_shape=lambda shape: (4,))
def stats(x):
    """Per row, over all values: [mean, std (population, ddof=0), Frobenius norm sqrt(sum x^2),
    max |x|], in float64; std from the centred values, not from sum x^2 - n mean^2. Output (n, 4)."""
    import torch

    from featstore.device import in_blocks

    if x.shape[1:].numel() == 0:
        return torch.zeros((len(x), 4), dtype=torch.float32, device=x.device)
    return in_blocks(_stats, x, FLOAT64_BLOCK_BYTES)


def _stats(x):
    import torch

    # float64: float32 norms of 65536 values (a 16 x 4096 lora_A) erred by 9e-7 of the row's
    # largest value, float64 ones by 5e-8, in 4 MB blocks as fast (2 cores; bench_shapes.py).
    wide = x.reshape(len(x), x.shape[1:].numel()).to(torch.float64)
    if wide.device.type == "cpu":  # two passes: 3x faster here than std_mean's one (probe_reductions.py)
        mean = wide.mean(1)
        std = torch.linalg.vector_norm(wide - mean[:, None], dim=1) / wide.shape[1] ** 0.5
        peak = wide.abs().amax(1)
    else:  # launch-bound on a GPU: a kernel each, 0.10-0.12 ms per 800 x 64 x 64 column against 0.14-0.20
        std, mean = torch.std_mean(wide, 1, correction=0)
        peak = torch.linalg.vector_norm(wide, float("inf"), dim=1)
    return torch.stack([mean, std, torch.linalg.vector_norm(wide, dim=1), peak], 1).to(torch.float32)


def matrix_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """`shape` if it is a matrix's, else the error every matrix featurizer gives."""
    if len(shape) != 2:
        raise SpecError(f"{name} needs 2-D values (a matrix per row); this column has values of shape {shape} "
                        "(pick the matrix columns with --layers, or use raw, stats or randproj, which take any shape)")
    return shape


def _norms_shape(shape):
    matrix_shape("norms", shape)
    return (8,)


@featurizer("norms", version="1", output_shape=_norms_shape)
def norms(x):
    """Euclidean norms of each matrix's rows r_i = ||A[i, :]|| and columns c_j = ||A[:, j]||,
    summarised as [mean, std (ddof=0), min, max] of r then of c, in float64. Output (n, 8)."""
    from featstore.device import in_blocks

    return in_blocks(_norms, x, FLOAT64_BLOCK_BYTES)


def _norms(x):
    import torch

    squares = x.to(torch.float64).square()  # summed along either axis: 3-10x faster than two norm() calls
    out = []
    for n in (squares.sum(2).sqrt(), squares.sum(1).sqrt()):
        out += [n.mean(1), n.std(1, correction=0), n.amin(1), n.amax(1)]
    return torch.stack(out, 1).to(torch.float32)


def projection_matrix(features: int, dim: int, seed: int):
    """The (features, dim) Gaussian matrix of `randproj`, entries N(0, 1/dim), drawn on the CPU
    from `seed` so it is the same on every device and machine."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn((features, dim), generator=generator, dtype=torch.float32) / dim**0.5


@functools.lru_cache(maxsize=2)
def _projection_on(features: int, dim: int, seed: int, device):
    """`projection_matrix` on `device`, kept for the next call: drawing it is most of a call's
    time on LoRA factors (16 x 4096 rows, dim 256: 0.21 s of 0.40 s per 1000 rows on 2 cores),
    and a build calls it once per column. Two kept: a build alternates at most between a few
    shapes, and each is features x dim x 4 bytes (64 MB there). Read only: never changed in place."""
    return projection_matrix(features, dim, seed).to(device)


def _randproj_shape(shape, dim, seed):
    if dim < 1:
        raise SpecError(f"randproj:dim must be at least 1, got {dim}")
    return (dim,)


@featurizer("randproj", version="1", output_shape=_randproj_shape)
def randproj(x, dim: int = 256, seed: int = 0):
    """Seeded Gaussian random projection of the flattened row: y = vec(x) @ R, with R of shape
    (prod(value_shape), dim) and entries N(0, 1/dim) (Johnson-Lindenstrauss: E||y||^2 = ||x||^2).
    Output (n, dim)."""
    import torch

    flat = x.reshape(len(x), -1).to(torch.float32)
    return flat @ _projection_on(flat.shape[1], dim, seed, x.device)
