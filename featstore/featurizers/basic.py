"""The first built-in featurizers: `raw`, `stats`, `svd`.

torch is imported inside each function so that planning a build, `ls` and `--help` never pay for it.
"""

from __future__ import annotations

from featstore.errors import SpecError
from featstore.featurizers import register


@register("raw", version="1", output_shape=lambda shape: shape)
def raw(x):
    """The values themselves, as float32: shape (n, *value_shape)."""
    import torch

    return x.to(torch.float32)


@register("stats", version="1", output_shape=lambda shape: (4,))
def stats(x):
    """Per-row [mean, std (population), Frobenius norm, max |x|], computed in float64: shape (n, 4)."""
    import torch

    flat = x.reshape(len(x), -1).to(torch.float64)
    if flat.shape[1] == 0:
        return torch.zeros((len(x), 4), dtype=torch.float32, device=x.device)
    columns = [flat.mean(1), flat.std(1, correction=0), flat.norm(dim=1), flat.abs().amax(1)]
    return torch.stack(columns, 1).to(torch.float32)


def _svd_shape(shape, k):
    if len(shape) != 2:
        raise SpecError(f"svd needs 2-D values (a matrix per row); this column has values of shape {shape}")
    if k < 1:
        raise SpecError(f"svd:k must be at least 1, got {k}")
    return (k,)


@register("svd", version="1", output_shape=_svd_shape, k=16)
def svd(x, k):
    """Top-k singular values of each row's matrix, descending; zero-padded past min(m, n): shape (n, k)."""
    import torch

    values = torch.linalg.svdvals(x.to(torch.float32))
    if values.shape[1] >= k:
        return values[:, :k].contiguous()
    return torch.nn.functional.pad(values, (0, k - values.shape[1]))
