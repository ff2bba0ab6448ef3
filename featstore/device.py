"""The one place that imports torch and decides where computation runs.

Imported lazily by the builder and the loading API, so `featstore --help`, `ls` and planning a
build never pay for importing torch.
"""

from __future__ import annotations

import functools

import numpy as np

from featstore.errors import FeatstoreError


@functools.cache
def resolve(device: str = "auto") -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; anything else is checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise FeatstoreError(f"device {device!r} is not usable here: {e}; use --device cpu or auto") from e
    return device


def to_tensor(values: np.ndarray, device: str = "cpu"):
    """A torch tensor of `values` on `device`; read-only (zero-copy) arrays are copied first, so a
    featurizer that writes in place can never touch the dataset's memory-mapped files."""
    import torch

    if not values.flags.writeable:
        values = values.copy()
    return torch.from_numpy(values).to(device)


def to_numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def torch_version() -> str:
    import torch

    return torch.__version__
