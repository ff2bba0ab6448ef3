"""Shared fixtures: a private FEATSTORE_HOME, the sanity preset on disk, an empty store location,
and `make_dataset` for hand-made datasets of any column layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

from featstore import presets


@pytest.fixture(autouse=True)
def featstore_home(tmp_path, monkeypatch):
    """Every test gets its own FEATSTORE_HOME, so nothing touches ~/.cache, and runs offline."""
    home = tmp_path / "home"
    monkeypatch.setenv("FEATSTORE_HOME", str(home))
    monkeypatch.delenv("FEATSTORE_STORE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets.disable_progress_bars()
    return home


@pytest.fixture(scope="session")
def _sanity_master(tmp_path_factory):
    return presets.make("sanity", tmp_path_factory.mktemp("presets") / "sanity")


@pytest.fixture
def sanity_dir(_sanity_master, featstore_home):
    """The sanity preset, generated once per session, copied where `--dataset sanity` finds it."""
    target = featstore_home / "datasets" / "sanity"
    shutil.copytree(_sanity_master, target)
    return target


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "store")


def matrices(rows: int, shape=(4, 4), seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, *shape)).astype(dtype)


def array2d_dataset(values: np.ndarray, labels=None, name: str = "layer_a") -> datasets.Dataset:
    """A Dataset with one datasets.Array2D/3D column built straight from numpy."""
    ndim = values.ndim - 1
    kind = {2: datasets.Array2D, 3: datasets.Array3D}[ndim]
    features = {name: kind(values.shape[1:], values.dtype.name)}
    data = {name: values}
    if labels is not None:
        features["category_label"] = datasets.ClassLabel(num_classes=int(max(labels)) + 1)
        data["category_label"] = labels
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def list_column(values: np.ndarray, fixed: bool = False) -> pa.Array:
    """Nested Arrow lists (variable- or fixed-size) holding `values` (n, *shape)."""
    arr = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        if fixed:
            arr = pa.FixedSizeListArray.from_arrays(arr, size)
        else:
            offsets = np.arange(0, len(arr) + 1, size, dtype=np.int32)
            arr = pa.ListArray.from_arrays(pa.array(offsets), arr)
    return arr


def saved_layers_dataset(path, layers: int, rows: int, dim: int, seed: int = 0, inf_at=None,
                         num_shards: int | None = None) -> None:
    """A save_to_disk dataset of `layers` Array2D float32 columns, built straight from numpy, in
    `num_shards` files; `inf_at` = (layer, row) puts an inf there."""
    features = datasets.Features({f"layer_{i:03d}": datasets.Array2D((dim, dim), "float32") for i in range(layers)})
    schema = features.arrow_schema
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal((rows, dim, dim), dtype=np.float32) for _ in range(layers)]
    if inf_at is not None:
        values[inf_at[0]][inf_at[1], 0, 0] = np.inf
    columns = [presets.matrices_to_arrow(v, schema.field(i).type) for i, v in enumerate(values)]
    datasets.Dataset(pa.Table.from_arrays(columns, schema=schema)).save_to_disk(str(path), num_shards=num_shards)


def crash_builds(args: list[str], points: Iterable[int], store: Callable[[int], str]) -> dict[int, int]:
    """{point: exit status} of `featstore *args --store store(point)` SIGKILLed at its `point`-th
    storage step (a killed one: -9), each a process of its own (tests/crash_builds.py), two at a time."""
    points = list(points)

    def run(part: list[int]) -> dict[int, int]:
        done = subprocess.run([sys.executable, str(Path(__file__).with_name("crash_builds.py")), json.dumps(args),
                               json.dumps([[p, store(p)] for p in part])], capture_output=True, text=True, check=False,
                              env=os.environ.copy(), timeout=600)  # a hung build fails the test, never CI's clock
        assert done.returncode == 0, done.stderr[-3000:]
        return {int(p): code for p, code in json.loads(done.stdout.splitlines()[-1]).items()}

    with ThreadPoolExecutor(2) as pool:
        return {p: code for part in pool.map(run, (points[0::2], points[1::2])) for p, code in part.items()}


def entry_info(values: np.ndarray, key: str = "ab" * 16):
    """The provenance of a hand-made entry holding `values` (for store tests)."""
    from featstore.keys import array_digest
    from featstore.manifest import EntryInfo

    return EntryInfo(key=key, input_digest="in", featurizer={"name": "raw", "params": {}, "version": "1"},
                     shape=values.shape, dtype=values.dtype.name, output_digest=array_digest(values),
                     created="2026-01-01T00:00:00+00:00", device="cpu")
