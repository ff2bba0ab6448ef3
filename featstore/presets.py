"""Deterministic synthetic datasets shaped like the problem we solve: one LoRA-style delta per layer.

Every matrix is `B @ A + noise` with `B = U diag(s)`, `A = V^T` (U, V random orthonormal, rank 4).
The category lives in the spectrum `s` of the *signal layers* only: there `s` is the class's
pattern (times a little per-row jitter); in every other layer `s` is the pattern of a random class,
drawn independently of the label, so its spectra have the same distribution but carry nothing.
`signal_layers(n_layers)` says which layers those are: layers in [n/4, n/2), e.g. 32-63 of 128.

Data is generated in fixed blocks of rows from seeds derived from (preset, layer, block), written
straight from numpy into Arrow (never Python lists), then saved with `DatasetDict.save_to_disk`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from featstore.errors import DatasetError

RANK = 4
N_CLASSES = 10
BLOCK_ROWS = 256
TRAIN_FRACTION = 0.8
LABEL_COLUMN = "category_label"


@dataclass(frozen=True)
class Preset:
    name: str
    rows: int
    layers: int
    dim: int
    seed: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.layers * self.dim * self.dim * 4

    @property
    def description(self) -> str:
        return f"{self.rows:,} rows x {self.layers} layers of {self.dim}x{self.dim} float32"


PRESETS = {
    "sanity": Preset("sanity", rows=320, layers=8, dim=16, seed=1),
    "1k": Preset("1k", rows=1_000, layers=128, dim=64, seed=1000),
    "10k": Preset("10k", rows=10_000, layers=128, dim=64, seed=10_000),
}
ALIASES = {"sanity_check_dataset": "sanity"}


def get(name: str) -> Preset | None:
    """The preset called `name` (or an alias of it), or None."""
    return PRESETS.get(ALIASES.get(name, name))


def signal_layers(n_layers: int) -> list[int]:
    """Indices of the layers whose spectra carry the category: [n/4, n/2)."""
    return list(range(n_layers // 4, max(n_layers // 2, n_layers // 4 + 1)))


def layer_name(i: int) -> str:
    return f"layer_{i:03d}"


def class_patterns(seed: int) -> np.ndarray:
    """(N_CLASSES, RANK) descending singular values: a geometric ladder of scales times a per-class
    decay, so classes differ in both overall size and shape of the spectrum."""
    rng = np.random.default_rng([seed, 0xC1A55])
    scale = 1.3 ** np.arange(N_CLASSES)
    decay = rng.uniform(0.5, 0.9, size=N_CLASSES)
    return (scale[:, None] * decay[:, None] ** np.arange(RANK)[None, :]).astype(np.float64)


def labels(preset: Preset) -> np.ndarray:
    """Balanced labels in a seeded random order."""
    rng = np.random.default_rng([preset.seed, 0x1ABE1])
    return rng.permutation(np.arange(preset.rows) % N_CLASSES).astype(np.int64)


def layer_block(preset: Preset, layer: int, start: int, stop: int, label: np.ndarray) -> np.ndarray:
    """Rows [start, stop) of one layer, float32 (stop - start, dim, dim). `start` is a multiple of
    BLOCK_ROWS, so the values never depend on how a caller batches the rows."""
    assert start % BLOCK_ROWS == 0 and stop - start <= BLOCK_ROWS
    rng = np.random.default_rng([preset.seed, layer, start // BLOCK_ROWS])
    n, d = stop - start, preset.dim
    u, _ = np.linalg.qr(rng.standard_normal((n, d, RANK)))
    v, _ = np.linalg.qr(rng.standard_normal((n, d, RANK)))
    decoy = rng.integers(0, N_CLASSES, size=n)
    jitter = np.exp(0.03 * rng.standard_normal((n, RANK)))
    cls = label if layer in signal_layers(preset.layers) else decoy
    s = class_patterns(preset.seed)[cls] * jitter
    b = u * s[:, None, :]  # B = U diag(s): (n, d, r); A = V^T: (n, r, d)
    delta = np.matmul(b, v.transpose(0, 2, 1)).astype(np.float32)
    delta += rng.standard_normal((n, d, d), dtype=np.float32) * np.float32(0.002)
    return delta


def features(preset: Preset):
    import datasets

    cols = {layer_name(i): datasets.Array2D((preset.dim, preset.dim), "float32") for i in range(preset.layers)}
    cols[LABEL_COLUMN] = datasets.ClassLabel(names=[f"category_{c}" for c in range(N_CLASSES)])
    return datasets.Features(cols)


def matrices_to_arrow(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """(n, d, d) numpy -> datasets' Array2D Arrow layout (list<list<value>>), zero-copy for values."""
    n, rows, cols = values.shape
    flat = pa.array(values.reshape(-1))
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, n * rows * cols + 1, cols, dtype=np.int32)), flat)
    outer = pa.ListArray.from_arrays(pa.array(np.arange(0, n * rows + 1, rows, dtype=np.int32)), inner)
    return pa.ExtensionArray.from_storage(arrow_type, outer)


def default_dir(name: str) -> Path:
    from featstore.config import home

    return home() / "datasets" / get(name).name


def ensure(name: str, out: Path | None = None, progress: bool = False) -> Path:
    """Path of preset `name` saved on disk, generating it first if it is not there yet."""
    out = Path(out) if out else default_dir(name)
    if not (out / "dataset_dict.json").exists():
        if progress:  # the first use of a preset takes a while (1k: ~25 s on 2 cores): say why, once
            preset = get(name)
            print(f"generating preset {preset.name} ({preset.description}, {_size(preset.nbytes)}) in {out}, once",
                  file=sys.stderr, flush=True)
        make(name, out, progress=progress)
    return out


def make(name: str, out: Path, progress: bool = False) -> Path:
    """Generate preset `name` into `out` (replaced atomically: a crash leaves no half dataset)."""
    preset = get(name)
    if preset is None:
        raise DatasetError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)} (alias: sanity_check_dataset)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # An Arrow stream of every row, then the saved splits: twice the dataset's size while it runs.
    needed, free = 2 * preset.nbytes, shutil.disk_usage(out.parent).free
    where = (f"; generate it elsewhere (featstore datasets make {name} --out DIR, or set FEATSTORE_HOME) "
             "or free some space")
    if free < needed:
        raise DatasetError(f"generating preset {name!r} needs about {_size(needed)} free in {out.parent} while it "
                           f"runs ({_size(preset.nbytes)} once done), and {_size(free)} are free" + where)
    try:
        return _generate(preset, out, progress)
    except OSError as e:  # the disk filled meanwhile (nothing is left behind)
        raise DatasetError(f"cannot generate preset {name!r} in {out.parent}: {e.strerror or e}" + where) from e


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _generate(preset: Preset, out: Path, progress: bool) -> Path:
    import datasets

    from featstore.progress import counted

    name = preset.name
    feats = features(preset)
    schema = feats.arrow_schema
    y = labels(preset)
    n_train = round(preset.rows * TRAIN_FRACTION)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        stream = work / "all.arrow"
        with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            starts = range(0, preset.rows, BLOCK_ROWS)
            for start in counted(starts, f"generating {name}", "block", progress):
                stop = min(start + BLOCK_ROWS, preset.rows)
                cols = [
                    matrices_to_arrow(layer_block(preset, i, start, stop, y[start:stop]), schema.field(i).type)
                    for i in range(preset.layers)
                ]
                cols.append(pa.array(y[start:stop], type=schema.field(LABEL_COLUMN).type))
                writer.write_batch(pa.record_batch(cols, schema=schema))
        full = datasets.Dataset.from_file(str(stream))
        splits = datasets.DatasetDict(train=full.select(range(n_train)), test=full.select(range(n_train, preset.rows)))
        saved = work / "saved"
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            splits.save_to_disk(str(saved))
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
        del full, splits
        staged = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        if out.exists():
            os.replace(out, staged)
        os.replace(saved, out)
        shutil.rmtree(staged, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
