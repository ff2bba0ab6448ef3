"""Run a featurizer over a column, checked: batches sized for the device (halved when it runs out
of memory), what it returns checked (a floating tensor of the declared shape, finite once stored,
its input left unchanged), and every failure named by featurizer, column and rows. Nothing it
returns reaches the store unchecked.
"""

from __future__ import annotations

import logging

import numpy as np

from featstore import device as devices
from featstore.errors import FeaturizerError
from featstore.featurizers import BoundFeaturizer

log = logging.getLogger(__name__)


def compute(f: BoundFeaturizer, x, shape: tuple[int, ...], layer: str, split: str, device: str,
            first: int = 0) -> np.ndarray:
    """`f` over the rows of `x` (column `layer` of `split`, its rows from `first` on) in batches
    (one call unless the featurizer is per-row and the rows do not fit), checked (a floating
    tensor of `shape`, finite once stored), as the array the store keeps (`device.to_stored`). Out
    of memory halves the batch. `f` must not change `x` in place (the column's other featurizers
    compute from it), and a result that is `x` itself is copied (it is written while they run).
    Copying the result to the host is the only wait for the GPU: the finiteness check runs on the
    host copy, which also catches values beyond the range of a 16-bit stored dtype. A failure names
    the input's first NaN or inf row, if any: then the data is the likely cause. `x` on the host
    with `device` a GPU (a column the GPU had no room for): each batch goes there in turn, its
    result comes back before the next, and running out of memory halves it as well."""
    import torch

    rows = len(x)
    moved = x.device.type == "cpu" and device != "cpu"
    batch = devices.batch_rows(x[:1].nbytes, rows, device) if f.featurizer.per_row else rows
    column = f"featurizer {f.spec} on column {layer!r} (split {split}"
    outs, start, wide = [], 0, False  # wide: it returned float64, whose range float32 may not hold
    while start < rows or not outs:
        stop = min(rows, start + batch)
        where = f"{column}, rows {first + start}-{first + max(stop - 1, 0)})"
        version = x._version  # torch counts in-place writes to a tensor and its views
        try:
            out = f(x[start:stop].to(device, non_blocking=True) if moved else x[start:stop])
        except Exception as e:  # a featurizer may raise anything; name it, the column and the rows
            if devices.is_out_of_memory(e) and f.featurizer.per_row and batch > 1:
                batch = max(1, batch // 2)
                log.warning("%s ran out of memory; retrying with batches of %d rows", where, batch)
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            raise FeaturizerError(f"{where} failed: {e!r}{_nonfinite_input(x[start:stop], first + start)}") from e
        if x._version != version:  # the column's next featurizer would compute from the changed values
            raise FeaturizerError(f"{where} changed its input in place; nothing of it was stored. Compute out of "
                                  "place (x = x - m, not x -= m; x.clamp(...), not x.clamp_(...))")
        expected = (stop - start, *shape[1:])
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or tuple(out.shape) != expected:
            got = f"{out.dtype}{list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            probed = "" if f.featurizer.output_shape or tuple(getattr(out, "shape", ())) == expected else (
                f" (the row shape {list(shape[1:])} came from a one-row probe: a featurizer's output per row must not "
                "depend on the batch; declare output_shape= if the probe cannot find it)")
            raise FeaturizerError(f"{where} returned {got}; it must return a floating tensor of shape "
                                  f"{list(expected)}{probed}")
        wide |= out.dtype == torch.float64
        outs.append(out.to(torch.float32).cpu() if moved else out.to(torch.float32))
        start = stop
    result = torch.cat(outs) if len(outs) > 1 else outs[0]
    if result.device == x.device and result.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        result = result.clone()  # the input itself (`raw`): the entry is written while the column is still in use
    stored = devices.to_stored(result, f.dtype)
    bad = devices.first_nonfinite_row(stored, f.dtype)
    if bad is not None:
        cause = _nonfinite_input(x[bad : bad + 1], first + bad)
        beyond = "" if cause or f.dtype == "float32" and not wide else \
            f" ({'returned float64, ' if wide else ''}stored as {f.dtype}: a value beyond its range?)"
        raise FeaturizerError(f"{column}) returned NaN or inf at row {first + bad}{beyond}; nothing of it was "
                              f"stored{cause}")
    return stored


def _nonfinite_input(x, first: int) -> str:
    """'; its input holds NaN or inf at row N ...' for the first such row of `x` (the column's
    rows from `first` on), else ''. Only looked at once a featurizer has failed, and never in the
    way of that failure's own error (a GPU that failed may fail again)."""
    import torch

    if not x.is_floating_point() or not len(x):
        return ""
    try:
        finite = torch.isfinite(x.reshape(len(x), -1)).all(1)
        if bool(finite.all()):
            return ""
        row = first + int((~finite).nonzero()[0, 0])
    except Exception:  # noqa: BLE001 (a hint only: the failure being reported must stay the error)
        return ""
    return f"; its input holds NaN or inf at row {row} (fix or drop such rows, or leave the column out with --layers)"
