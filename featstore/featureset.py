"""`FeatureSet`: the read-only view of one dataset's catalogued features, loaded as torch tensors.

Every load checks its names first (errors list what exists and say how to build what is missing),
then reads chunks in parallel straight into the result, checked against their digests.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Self

import numpy as np

from featstore.device import from_stored, load_target, stored_view
from featstore.errors import FeatstoreError, NotFoundError, StoreError, brief, did_you_mean
from featstore.featurizers import is_yours, parse_spec
from featstore.manifest import Catalog, CatalogRow, layer_matches, meant_layer, natural_key
from featstore.sources import OBJECT_PREFIX
from featstore.store import Store

PIN_BYTES = 4 << 20  # loads to a GPU go through pinned host memory from this size on
THREADED_BYTES = 1 << 20  # load_many reads entries in threads from this mean size on: smaller ones
# cost less than the threads' start and GIL hand-offs (512 svd/stats entries of 1k: 0.04 s in
# one thread, 0.17 s in four, on 2 cores)


class FeatureSet:
    """Read-only view of one dataset's catalogued features."""

    def __init__(self, store: Store, catalog: Catalog, lease: str | None = None):
        self.store = store
        self.catalog = catalog
        self._rows = {r.slot: r for r in catalog.rows}
        self._featurizers = sorted({r.featurizer for r in catalog.rows})
        self._layers = sorted({r.layer for r in catalog.rows}, key=natural_key)  # sorted once: row() asks per call
        self._known = frozenset(self._layers)
        self._release = weakref.finalize(self, _release, store, lease, os.getpid()) if lease else None

    def close(self) -> None:
        """Give up this view's lease on its entries (also done when it is garbage collected or
        the process exits); loading still works, but gc may then remove what it reads."""
        if self._release:
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FeatureSet({self.catalog.dataset!r}, splits={self.splits}, layers={len(self.layers)}, "
                f"featurizers={self.featurizers})")

    @property
    def dataset(self) -> str:
        return self.catalog.dataset

    @property
    def splits(self) -> list[str]:
        return sorted(self.catalog.splits)

    @property
    def layers(self) -> list[str]:
        """The layers, numbers in their names in numeric order (`layers.2.mlp` before `layers.10.mlp`)."""
        return list(self._layers)

    @property
    def featurizers(self) -> list[str]:
        return list(self._featurizers)

    @property
    def label_names(self) -> list[str] | None:
        return list(self.catalog.label_names) if self.catalog.label_names else None

    def layer_names(self, layers: str | Iterable[str]) -> list[str]:
        """`layers` with each glob (`*`, `?`, `[...]`, as `--layers` takes them) replaced by the
        layers it matches, in `self.layers`' order; a layer's own name stands for itself."""
        out = []
        for name in names(layers):
            if name in self._known or not any(c in name for c in "*?["):
                out.append(name)
            elif matched := [layer for layer in self._layers if layer_matches(layer, name)]:
                out += matched
            else:
                raise NotFoundError(f"no layer of {self.dataset!r} matches {name!r}; layers: {brief(self._layers)}")
        return out

    def row(self, layer: str, featurizer: str, split: str = "train") -> CatalogRow:
        """The catalog row for (split, layer, featurizer); errors list what exists."""
        self._check_split(split)
        if featurizer in self._known and layer not in self._known and self._stores(layer):
            raise NotFoundError(f"{featurizer!r} is a layer of {self.dataset!r} and {layer!r} is not: "
                                "pass the layer first, then the featurizer")
        spec = self._match_featurizer(featurizer)
        if (split, layer, spec) in self._rows:
            return self._rows[(split, layer, spec)]
        if layer not in self._known:
            hint = (f" ({layer!r} is a featurizer, not a layer: pass it as the featurizer)" if self._stores(layer)
                    else meant_layer(layer, self._layers))
            raise NotFoundError(f"no layer {layer!r} in {self.dataset!r}{hint}; layers: {brief(self.layers)}")
        raise NotFoundError(f"no {spec} features of {layer!r} (split {split}) in {self.dataset!r}; build them: "
                            f"{self.how_to_build(spec, layer)}")

    def load(self, layer: str, featurizer: str, split: str = "train", *, device=None, dtype=None,
             rows: slice | None = None):
        """Features of one layer as a torch.Tensor of shape (n_rows, *feature_shape), on `device`
        (a string or torch.device; "auto": a GPU if torch sees one), in the stored dtype unless
        `dtype` (a torch.dtype or its name, "float16") is given. `rows` (a slice) reads only the
        chunks it needs. For a GPU `device`, chunks are read straight into pinned memory and copied
        without blocking."""
        row = self.row(layer, featurizer, split)
        return self._read(row, checked_rows(rows), *load_target(device, dtype))

    def load_many(self, layers: str | Iterable[str], featurizer: str, split: str = "train", *, stack: bool = False,
                  device=None, dtype=None, rows: slice | None = None):
        """`load` for several layers, read in parallel: a dict {layer: tensor}, or with `stack` one
        tensor of shape (n_layers, n_rows, *feature_shape) in the order of `layers`. A glob among
        them (`"layer_0*"`) stands for the layers it matches, in `self.layers`' order."""
        import torch

        layers, rows = self.layer_names(layers), checked_rows(rows)
        found = [self.row(layer, featurizer, split) for layer in layers]  # every name checked first
        device, dtype = load_target(device, dtype)
        if stack and len({r.shape[1:] for r in found}) > 1:
            shapes = ", ".join(f"{layer} {tuple(r.shape)}" for layer, r in zip(layers, found))
            raise FeatstoreError(f"cannot stack {found[0].featurizer} features of layers of different shapes ({shapes}); "
                                 "load them without stack=True (a dict of layer: tensor)")
        if stack and found and len({(r.shape, r.dtype) for r in found}) == 1:  # read straight into the stack
            shape = (len(found), *self._rows_shape(found[0], rows))
            host = self._host_buffer(found[0], shape, pinned=self._pin(device, shape))
            _map(lambda i: self._read_into(found[i], rows, stored_view(host[i])), range(len(found)), found)
            return self._finish(host, device, dtype)
        tensors = _map(lambda r: self._read(r, rows, device, dtype), found, found)
        if stack:
            return torch.stack(tensors) if tensors else torch.empty(0)
        return dict(zip(layers, tensors))

    def labels(self, split: str = "train", *, device=None, rows: slice | None = None):
        """The split's label column as an int64 torch.Tensor."""
        self._check_split(split)
        key = self.catalog.splits[split].labels
        if key is None and self.catalog.label_column:
            raise NotFoundError(f"split {split} of {self.dataset!r} has no labels: its data has no column "
                                f"{self.catalog.label_column!r}")
        if key is None:
            raise NotFoundError(f"{self.dataset!r} was built without a label column (see --label-column)")
        n = self.catalog.splits[split].rows
        device, _ = load_target(device, None)
        return self._read(CatalogRow(split, "", "labels", key, (n,), "int64", n * 8, ""), checked_rows(rows), device, None)

    def _read(self, row: CatalogRow, rows, device, dtype):
        """One entry as a tensor on `device` in `dtype`; for a large one to a GPU through pinned memory."""
        if self._pin(device, row.shape):
            host = self._host_buffer(row, self._rows_shape(row, rows), pinned=True)
            self._read_into(row, rows, stored_view(host))
        else:
            host = from_stored(self._read_into(row, rows), row.dtype)
        return self._finish(host, device, dtype)

    def _read_into(self, row: CatalogRow, rows, out=None):
        """`store.read_entry` of `row`; a missing or corrupt entry's error names the feature and
        how to get it back."""
        try:
            return self.store.read_entry(row.key, rows, out=out, known=row)
        except StoreError as e:
            if row.featurizer == "labels":  # a build of any featurizer writes the labels it lacks
                what, how = f"the labels of split {row.split}", self.how_to_build(self.featurizers)
            else:
                what = f"{row.featurizer} features of {row.layer!r} (split {row.split})"
                how = self.how_to_build(row.featurizer, glob.escape(row.layer))
            raise StoreError(f"{what} of {self.dataset!r}: {e} ({how})") from e

    @staticmethod
    def _pin(device, shape: tuple[int, ...]) -> bool:
        """Pinned host memory for copies to a GPU, but only for large ones: allocating it costs
        more than it saves below a few MB."""
        return device is not None and str(device).startswith("cuda") and int(np.prod(shape)) * 4 >= PIN_BYTES

    @staticmethod
    def _rows_shape(row: CatalogRow, rows: slice | None) -> tuple[int, ...]:
        return (len(range(*(rows or slice(None)).indices(row.shape[0]))), *row.shape[1:])

    @staticmethod
    def _host_buffer(row: CatalogRow, shape: tuple[int, ...], pinned: bool):
        """An empty host tensor for `row`'s values, in its stored dtype (read into it through `stored_view`)."""
        import torch

        return torch.empty(shape, dtype=getattr(torch, row.dtype), pin_memory=pinned)

    @staticmethod
    def _finish(tensor, device, dtype):
        if device is not None:
            tensor = tensor.to(device, non_blocking=tensor.is_pinned())
        return tensor.to(dtype) if dtype is not None else tensor

    def _check_split(self, split: str) -> None:
        if split not in self.catalog.splits:
            raise NotFoundError(f"no split {split!r} in {self.dataset!r}; splits: {', '.join(self.splits)}")

    def how_to_build(self, specs: str | Iterable[str], layer: str | None = None) -> str:
        """The command that builds `specs` (of `layer`) into this store; the call, for a Dataset object."""
        specs = names(specs)
        if self.dataset.startswith(OBJECT_PREFIX):
            layers = f", layers=[{layer!r}]" if layer else ""
            return f"featstore.build(dataset, {list(specs)!r}{layers}, store={self.store.location!r})"
        words = ["featstore", "build", "--dataset", self.dataset]
        words += [w for module in _modules_of(specs) for w in ("--import", module)]
        words += [w for spec in specs for w in ("--featurizer", spec)]
        return shlex.join(words + (["--layers", layer] if layer else []) + ["--store", self.store.location])

    def _stores(self, name: str) -> bool:
        """Whether `name` is a catalogued spec or featurizer name (nothing parsed, nothing imported)."""
        return any(name in (spec, spec.partition(":")[0]) for spec in self._featurizers)

    def _match_featurizer(self, spec: str) -> str:
        """An exact catalogued spec; else the canonical form of `spec`; else the one spec of that name."""
        available = self.featurizers
        if spec in available:
            return spec
        try:
            canonical = parse_spec(spec).spec
        except FeatstoreError:
            canonical = None
        if canonical in available:
            return canonical
        same_name = [a for a in available if a.partition(":")[0] == spec]
        if len(same_name) == 1:
            return same_name[0]
        if canonical and (stored := [a for a in available if _without_dtype(a) == _without_dtype(canonical)]):
            raise NotFoundError(f"no featurizer {spec!r} in {self.dataset!r}: it was stored as "
                                f"{' and '.join(map(repr, stored))}; load that spec (`dtype=` converts as it loads), "
                                f"or build this one: {self.how_to_build(canonical)}")
        hint = "ambiguous, pass one of" if same_name else "available"
        build = f"; or build it: {self.how_to_build(canonical)}" if canonical and not same_name else ""
        near = "" if canonical or same_name else did_you_mean(spec, available)
        raise NotFoundError(f"no featurizer {spec!r} in {self.dataset!r}{near}; {hint}: "
                            f"{', '.join(same_name or available)}{build}")


def _modules_of(specs: Iterable[str]) -> list[str]:
    """The modules a command must `--import` to find `specs` by name: those of the featurizers of
    yours registered here (not featstore's own, nor a notebook's or a script's `__main__`)."""
    modules = []
    for spec in specs:
        try:
            module = parse_spec(spec).module
        except FeatstoreError:  # not registered here: nothing to name
            continue
        if is_yours(module) and module not in modules:
            modules.append(module)
    return modules


def _without_dtype(spec: str) -> str:
    """A spec without its stored dtype: `svd:k=8,dtype=float16` -> `svd:k=8`."""
    return re.sub(r"(?<=[:,])dtype=[^,]*(,|$)", "", spec).rstrip(":,")


def _map(fn, items, rows: list[CatalogRow]) -> list:
    """`fn` over `items`, in four threads where the entries (`rows`) are large enough to gain."""
    if not rows or sum(r.nbytes for r in rows) < THREADED_BYTES * len(rows):
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(len(rows), 4)) as pool:
        return list(pool.map(fn, items))


def _release(store: Store, lease: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked child (a DataLoader worker) must not drop its parent's lease
        store.release(lease)


def checked_rows(rows: slice | None) -> slice | None:
    """`rows` if it is a slice or None (every row); an error saying what to pass instead. (A step
    other than 1 is the store's ValueError: reads are of contiguous chunks.)"""
    if rows is not None and not isinstance(rows, slice):
        raise TypeError(f"rows must be a slice such as slice(0, 100) (or None for every row), not {rows!r:.60}; "
                        "for other selections load them all, or their span, and index the tensor")
    return rows


def names(value: str | Iterable[str]) -> tuple[str, ...]:
    """Featurizer specs, layer globs or devices as given: one string is one name (`"svd"` means
    `("svd",)`, not its letters)."""
    return (value,) if isinstance(value, str) else tuple(value)
