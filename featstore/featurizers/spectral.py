"""Built-in featurizers of the singular values: `svd` and `spectral`.

Singular values come from `featstore.svdvals.singular_values`, which picks a robust route per
device and shape (float64 Gram + eigvalsh on the CPU, a batched Jacobi kernel on the GPU). The
built-ins pin their version: a faster route gives the same values to within the documented
tolerances, so entries stay valid (as GPU- and CPU-built ones are). Tested against float64
NumPy in tests/test_featurizers.py.
"""

from __future__ import annotations

from featstore.errors import SpecError
from featstore.featurizers import featurizer
from featstore.featurizers.basic import matrix_shape


def _svd_shape(shape, k, normalize):
    matrix_shape("svd", shape)
    if k < 1:
        raise SpecError(f"svd:k must be at least 1, got {k}")
    return (k,)


@featurizer("svd", version="1", output_shape=_svd_shape)
def svd(x, k: int = 16, normalize: bool = False):
    """Top-k singular values s_1 >= ... >= s_k of each row's matrix, zero-padded past min(rows, cols).
    normalize=true divides by ||s||_2 = ||A||_F (scale-free spectra). Output (n, k)."""
    import torch

    from featstore.svdvals import singular_values

    values = singular_values(x)
    if normalize:
        values = values / values.norm(dim=1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
    if values.shape[1] >= k:
        return values[:, :k].contiguous()
    return torch.nn.functional.pad(values, (0, k - values.shape[1]))


def _spectral_shape(shape):
    matrix_shape("spectral", shape)
    return (4,)


@featurizer("spectral", version="1", output_shape=_spectral_shape)
def spectral(x):
    """From all singular values s (p_i = s_i / sum s): [effective rank exp(-sum p_i log p_i)
    (Roy & Vetterli 2007), stable rank sum s^2 / s_1^2, spectral entropy -sum p_i log p_i,
    nuclear / Frobenius ratio sum s / sqrt(sum s^2)]; 0 for an all-zero matrix. Output (n, 4)."""
    import torch

    from featstore.svdvals import singular_values

    s = singular_values(x).to(torch.float64)
    total = s.sum(1, keepdim=True)
    p = s / total.clamp_min(1e-300)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(1)
    frob2 = (s * s).sum(1)
    nonzero = s[:, 0] > 0
    stable = torch.where(nonzero, frob2 / s[:, 0].clamp_min(1e-300) ** 2, 0.0)
    ratio = torch.where(nonzero, total[:, 0] / frob2.sqrt().clamp_min(1e-300), 0.0)
    effective = torch.where(nonzero, entropy.exp(), 0.0)
    return torch.stack([effective, stable, entropy, ratio], 1).to(torch.float32)
