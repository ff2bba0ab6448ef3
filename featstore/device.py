"""The one place that imports torch and decides where computation runs.

Imported lazily by the builder and the loading API, so `featstore --help`, `ls` and planning a
build never pay for importing torch.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from contextlib import contextmanager

import numpy as np

from featstore.errors import FeatstoreError

_NAMES = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(device) -> str:
    """The name of `device` (a string or a `torch.device`) if a build can run on it: auto, cpu,
    cuda, cuda:N. Checked without importing torch: a typo fails at once, even in a build that has
    nothing to compute."""
    torch = sys.modules.get("torch")  # a torch.device comes from an imported torch
    name = str(device) if torch is not None and isinstance(device, torch.device) else device
    if not isinstance(name, str) or not _NAMES.fullmatch(name):
        raise FeatstoreError(f"device {device!r} is not usable here: a build runs on auto, cpu, cuda or cuda:N")
    return name


@functools.cache
def resolve(device: str = "auto") -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; anything else is checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise FeatstoreError(f"device {device!r} is not usable here: {e}; use cpu or auto") from e
    return device


def load_target(device, dtype) -> tuple:
    """(device, dtype) for tensors a load returns, checked before anything is read: `device` a
    string or torch.device (auto: a GPU if torch sees one), `dtype` a torch.dtype or its name
    ("float16", as a build's --dtype says it); None leaves either as stored."""
    import torch

    if device is not None:
        device = resolve(str(device))
    if dtype is not None and not isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.") if isinstance(dtype, (str, np.dtype)) else None
        found = getattr(torch, name, None) if name else None
        if not isinstance(found, torch.dtype):
            raise FeatstoreError(f"dtype {dtype!r} is not a torch dtype: pass a torch.dtype or its name "
                                 "(float32, float16, bfloat16, float64)")
        dtype = found
    return device, dtype


def cpu_count() -> int:
    """The cores this process may use: OMP_NUM_THREADS when set (Dask workers set it to their
    thread count), else the cores it may run on."""
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and int(limit) > 0:
        return int(limit)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_saved_threads: list[int] = []


def intra_op_threads(threads: int) -> None:
    """Give torch's CPU ops `threads` intra-op threads until `restore_threads` ends. A CPU build
    gives its compute lanes one each (torch's intra-op threads competing with the lanes and the
    reader and writer threads made a 10%-append rebuild of 1k 1.4x and a cold build 1.1x slower,
    benchmarks/bench_incremental.py), or every core to a lone lane."""
    import torch

    if not _saved_threads:
        _saved_threads.append(torch.get_num_threads())
    torch.set_num_threads(threads)


@contextmanager
def restore_threads():
    """Give torch back the intra-op thread count that `intra_op_threads` took, when the block ends."""
    try:
        yield
    finally:
        if _saved_threads:
            sys.modules["torch"].set_num_threads(_saved_threads.pop())


def host_tensor(values: np.ndarray, device: str = "cpu"):
    """A host tensor of `values`, ready for `.to(device, non_blocking=True)`. Read-only (zero-copy)
    arrays are copied first, so a featurizer that writes in place can never touch the dataset's
    memory-mapped files; for a GPU the copy lands in pinned memory (52-55 GB/s to the device,
    against 8-10 GB/s from pageable memory, on an H100 per the featurizers issue's note)."""
    import torch

    if not device.startswith("cuda"):
        return torch.from_numpy(values if values.flags.writeable else values.copy())
    host = torch.empty(values.shape, dtype=torch.from_numpy(np.empty(0, values.dtype)).dtype, pin_memory=True)
    host.numpy()[...] = values
    return host


def to_stored(tensor, dtype: str) -> np.ndarray:
    """Features as the numpy array the store keeps: float32, float16, or bfloat16 as its raw 16
    bits (uint16; numpy has no bfloat16)."""
    import torch

    if dtype == "bfloat16":  # through int16, the same bits: torch before 2.3 has no uint16
        return tensor.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return tensor.to(getattr(torch, dtype)).cpu().numpy()


def from_stored(values: np.ndarray, dtype: str):
    """The torch tensor of a stored array (see `to_stored`), sharing its memory."""
    import torch

    if dtype == "bfloat16":
        return torch.from_numpy(values.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(values)


def stored_view(tensor) -> np.ndarray:
    """A host tensor's memory as the numpy array the store reads into (see `to_stored`)."""
    import torch

    return tensor.view(torch.int16).numpy().view(np.uint16) if tensor.dtype == torch.bfloat16 else tensor.numpy()


def first_nonfinite_row(values: np.ndarray, dtype: str) -> int | None:
    """The first row of a stored array holding NaN or inf, or None."""
    import torch

    tensor = from_stored(values, dtype)
    finite = torch.isfinite(tensor.reshape(len(tensor), -1)).all(1)
    return None if bool(finite.all()) else int((~finite).nonzero()[0, 0])


def batch_rows(row_bytes: int, rows: int, device: str) -> int:
    """Rows per featurizer call: everything on the CPU (bounded at 1 GiB of input), and on a GPU
    what fits in a quarter of its free memory assuming 8x the input for workspace."""
    import torch

    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        budget = free // 4 // 8
    else:
        budget = 1 << 30
    return max(1, min(rows, budget // max(row_bytes, 1)))


def in_blocks(fn, x, block_bytes: int):
    """`fn(x)` for a per-row `fn` that works in float64: on the CPU over blocks of rows of about
    `block_bytes` as float64, whose copies stay in the caches (a whole column's spills out of them:
    `norms` of 1000 x 16 x 4096 took 1.3 s at once, 0.13 s in 4 MB blocks, 2 cores); on a GPU, at once."""
    import torch

    block = max(1, block_bytes // max(1, 8 * x.shape[1:].numel()))
    if x.device.type != "cpu" or len(x) <= block:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(block)])


def is_out_of_memory(error: BaseException) -> bool:
    """A GPU's out of memory, or the host's: torch's CPU allocator ("can't allocate memory") or
    numpy's MemoryError."""
    import torch

    message = str(error).lower()
    return (isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in message
            or "can't allocate memory" in message)


def torch_version() -> str:
    import torch

    return torch.__version__
