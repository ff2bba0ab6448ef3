"""PyTorch integration: a map-style `FeatureDataset` over stored features, and `load_split` for
small experiments that want a whole split as tensors.

A `FeatureDataset` pickles as plain data (store location, entry keys), never an open handle: each
`DataLoader` worker reads the entries it needs itself, once, on first use. The process that made
it holds a lease on those entries (see `featstore gc`) for as long as it lives.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch.utils.data import Dataset

from featstore.api import open as open_store
from featstore.device import from_stored
from featstore.errors import StoreError
from featstore.featureset import FeatureSet, names
from featstore.store import Store


def _opened(dataset: Any, store: str | None) -> FeatureSet:
    """`dataset` itself where it is a FeatureSet (a training script's `featstore.open(...)`, with
    its store and its lease), else the view `featstore.open(dataset, store)` makes."""
    if isinstance(dataset, FeatureSet):
        if store is not None:
            raise ValueError(f"{dataset!r} already has its store ({dataset.store.location}): drop store=")
        return dataset
    return open_store(dataset, store)


def _choose(fs: FeatureSet, layers: str | Iterable[str] | None, featurizers: str | Iterable[str] | None,
            split: str):
    layers = fs.layer_names(layers) if layers is not None else fs.layers
    featurizers = names(featurizers) if featurizers is not None else fs.featurizers
    return [(layer, fs.row(layer, f, split)) for layer in layers for f in featurizers]


class FeatureDataset(Dataset):
    """Rows of one split: item `i` is `(features, label)`, where `features` is a dict
    {(layer, featurizer spec): tensor of that row} or, with `flatten`, one float32 1-D tensor of
    them all concatenated in (layer, featurizer) order; `label` is an int64 scalar tensor. For a
    dataset without a label column item `i` is `features` alone (a None label would stop
    DataLoader's default collate).

    Each process that takes items (each DataLoader worker) reads the chosen entries of the split
    whole, once, and holds them: rows x the features' bytes (1k's train split: 6.5 MB of `svd` for
    all 128 layers, 1.7 GB of `raw`).

        ds = FeatureDataset("1k", layers=["layer_032", "layer_033"], featurizers=["svd"], flatten=True)
        loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)

    `dataset` is anything `featstore.open` takes, or a FeatureSet it returned: then that view's
    lease is the one that keeps gc off the entries, for as long as it stays open.
    """

    def __init__(self, dataset: Any, layers: str | Iterable[str] | None = None,
                 featurizers: str | Iterable[str] | None = None, split: str = "train", store: str | None = None,
                 flatten: bool = False):
        self._view = _opened(dataset, store)  # checks every name now; leases the entries
        chosen = _choose(self._view, layers, featurizers, split)
        self.location = self._view.store.location
        self.dataset = self._view.dataset
        self.split = split
        self.flatten = flatten
        self.columns = [(layer, row.featurizer) for layer, row in chosen]
        self._entries = [(row.key, row.dtype) for _, row in chosen]
        self._labels = self._view.catalog.splits[split].labels
        self.label_names = self._view.label_names  # class id -> name, or None (labels without names)
        self._rows = self._view.catalog.splits[split].rows
        self._rebuild = self._view.how_to_build(sorted({spec for _, spec in self.columns}))  # for a missing entry
        self._data: tuple[list[torch.Tensor], torch.Tensor | None] | None = None

    def __getstate__(self) -> dict:  # what a DataLoader worker receives: no handle, no lease, no data
        return {k: v for k, v in self.__dict__.items() if k not in ("_view", "_data")} | {"_view": None, "_data": None}

    def __len__(self) -> int:
        return self._rows

    def __repr__(self) -> str:
        return (f"FeatureDataset({self.dataset!r}, split={self.split!r}, rows={self._rows}, "
                f"columns={len(self.columns)}{', flatten=True' if self.flatten else ''})")

    def _load(self) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        if self._data is None:
            store = self._view.store if self._view is not None else Store.open(self.location)
            tensors = [from_stored(self._read(store, key, f"{spec} features of {layer!r}"), dtype)
                       for (layer, spec), (key, dtype) in zip(self.columns, self._entries)]
            if self.flatten:
                tensors = [torch.cat([t.reshape(len(t), -1).to(torch.float32) for t in tensors], 1)]
            labels = torch.from_numpy(self._read(store, self._labels, "the labels")) if self._labels else None
            self._data = (tensors, labels)
        return self._data

    def _read(self, store: Store, key: str, what: str):
        """An entry's values; a missing or corrupt one's error names the feature (as `load` does)."""
        try:
            return store.read_entry(key)
        except StoreError as e:
            raise StoreError(f"{what} (split {self.split}) of {self.dataset!r}: {e} ({self._rebuild})") from e

    def __getitem__(self, i: int):
        tensors, labels = self._load()
        features = tensors[0][i] if self.flatten else {c: t[i] for c, t in zip(self.columns, tensors)}
        return (features, labels[i]) if labels is not None else features


def load_split(dataset: Any, layers: str | Iterable[str] | None = None, featurizers: str | Iterable[str] | None = None,
               split: str = "train", store: str | None = None, device=None, dtype=None):
    """A whole split as tensors: ({(layer, featurizer spec): tensor (n_rows, ...)}, labels or None).
    `dataset` may be an open FeatureSet, which stays open."""
    fs = _opened(dataset, store)
    with fs if fs is not dataset else nullcontext():
        chosen = _choose(fs, layers, featurizers, split)
        features = {(layer, row.featurizer): fs.load(layer, row.featurizer, split, device=device, dtype=dtype)
                    for layer, row in chosen}
        labels = fs.labels(split, device=device) if fs.catalog.splits[split].labels else None
    return features, labels
