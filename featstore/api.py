"""The public Python surface: `build`, `open`, and the `FeatureSet` view of one dataset's features."""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
import shlex
import time
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, Self

import numpy as np

from featstore import builder
from featstore.config import default_store
from featstore.device import check_device, from_stored, load_target, stored_view
from featstore.digest_cache import cached_digests
from featstore.errors import (
    DatasetError,
    FeatstoreError,
    NotFoundError,
    ReadOnlyStore,
    StaleError,
    StoreError,
    UnknownFeaturizer,
    brief,
)
from featstore.featurizers import is_yours, parse_spec
from featstore.manifest import Catalog, CatalogRow, layer_matches, natural_key
from featstore.sources import DEFAULT_LABEL_COLUMN, OBJECT_PREFIX, dataset_id, load_source
from featstore.store import Store
from featstore.svdvals import prefetch_triton

log = logging.getLogger(__name__)

DEFAULT_FEATURIZERS = ("stats", "svd")
PIN_BYTES = 4 << 20  # loads to a GPU go through pinned host memory from this size on
THREADED_BYTES = 1 << 20  # load_many reads entries in threads from this mean size on: smaller ones
# cost less than the threads' start and GIL hand-offs (512 svd/stats entries of 1k: 0.04 s in
# one thread, 0.17 s in four, on 2 cores)


def build(
    dataset: Any,
    featurizers: str | Iterable[str] = DEFAULT_FEATURIZERS,
    *,
    layers: str | Iterable[str] = (),
    label_column: str | None = None,
    store: str | None = None,
    device: str = "auto",
    dtype: str = "float32",
    rehash: bool = False,
    progress: bool = True,
    workers: int = 0,
    scheduler: str | None = None,
    devices: str | Iterable[str] = (),
) -> builder.BuildReport:
    """Compute the features of `dataset` the store lacks and catalogue them; see `featstore build`.

    `dataset` is anything `--dataset` accepts, or a `datasets.Dataset` / `DatasetDict`.
    `featurizers` are specs like `"svd:k=32"`; `layers` are globs over column names; `device` is
    auto, cpu, cuda, cuda:N (or a `torch.device` of those); `dtype` is
    the stored dtype of features whose spec does not set one (float32, float16, bfloat16).
    Column digests are cached while the dataset files' stats match; `rehash` hashes every column.
    `label_column` defaults to `category_label` if the data has it (or the one the catalog has).
    `progress` (on by default, as for the commands): show it on stderr, a bar on a terminal or in
    a notebook, else a line every 30 s (featstore.progress); False: none. `workers` (a local Dask
    cluster of that many processes) or `scheduler` (a Dask scheduler's address) spread the layers
    over Dask workers (see featstore.distributed).
    `devices` (or `device="cuda"` where torch sees several GPUs) spreads them over one worker per
    device.
    """
    bound = tuple({b.spec: b for b in (parse_spec(s, dtype) for s in names(featurizers))}.values())
    location = store or default_store()
    device = check_device(device)
    devices = _devices(names(devices), device, workers, scheduler)
    try:
        existing = Store.open(location)
    except StoreError:
        existing = None
    default_label = _catalogued_label(existing, dataset)
    if workers or scheduler or devices:
        if not isinstance(dataset, (str, os.PathLike)):
            raise FeatstoreError("a distributed build needs a dataset its workers can open: a name, path or URL")
        from featstore import distributed

        return distributed.build(str(dataset), bound, names(layers), label_column, location, device, rehash,
                                 progress, workers, scheduler, devices, default_label)
    source = load_source(dataset, names(layers), label_column, progress=progress, default_label=default_label)
    started = time.perf_counter()
    # the files' stats before any column is read
    cache = cached_digests(None if rehash else existing, source, rehash, progress)
    build_plan = builder.plan(source, bound, cache, started)  # every check first: a failed build creates no store
    return builder.execute(build_plan, Store.open(location, create=True), device, progress, rehash)


def open(dataset: Any, store: str | None = None, *, require_fresh: bool = False) -> FeatureSet:
    """The features the store holds for `dataset` (anything `--dataset` accepts; a plain
    `datasets.Dataset` counts as split `train`). Reads only the store, never the dataset, unless
    `require_fresh`: then it checks the catalogued features against the current data and
    featurizer code (as `featstore status` does) and raises StaleError if any is stale."""
    location = store or default_store()
    st = Store.open(location)
    name = catalogued_name(st, dataset)
    read_only, lease = False, None
    with ExitStack() as reading:
        try:
            reading.enter_context(st.storage.lock("store", shared=True, timeout=builder.LOCK_TIMEOUT))  # no gc now
        except ReadOnlyStore:  # a store shared read-only: no gc runs from here either
            read_only = True
        catalog = st.read_catalog(name)
        if catalog is None:
            known = ", ".join(c.dataset for c in st.catalogs()) or "none"
            how = (shlex.join(["featstore", "build", "--dataset", name, "--store", location])
                   if isinstance(dataset, (str, os.PathLike))
                   else f"featstore.build(dataset, featurizers, store={location!r})")
            raise NotFoundError(f"the store {location} holds no features of {name!r} (it holds: {known}); "
                                f"build them first: {how}")
        keys = {r.key for r in catalog.rows} | {s.labels for s in catalog.splits.values() if s.labels}
        try:
            lease = None if read_only else st.lease(keys)  # gc leaves these entries alone while this process lives
        except ReadOnlyStore:
            read_only = True
        except OSError as e:
            log.warning("cannot lease entries in %s (%s): a concurrent gc could remove them", location, e)
    if read_only:
        log.warning("the store %s cannot be written here: its entries are read without the lease that keeps a gc "
                    "(run where the store can be written) from removing them meanwhile", location)
    fs = FeatureSet(st, catalog, lease)
    if require_fresh:
        _require_fresh(fs, dataset)
    return fs


def _catalogued_label(st: Store | None, dataset: Any) -> str:
    """The label column used when none is given: the one the store's catalog of `dataset` was
    built with (a later build without --label-column keeps its labels; status checks them), else
    category_label. Used only where the data has it."""
    catalog = st.read_catalog(catalogued_name(st, dataset)) if st is not None else None
    return catalog.label_column if catalog is not None and catalog.label_column else DEFAULT_LABEL_COLUMN


def catalogued_name(st: Store, dataset: Any) -> str:
    """The name `st` catalogues `dataset` under: its `dataset_id`, or, for a local path whose data
    is gone (deleted once its features were built), the absolute path it was built from."""
    name = dataset_id(dataset)
    if isinstance(dataset, (str, os.PathLike)) and not st.storage.exists(st.catalog_path(name)):
        gone = os.path.realpath(os.path.expanduser(str(dataset)))
        if st.storage.exists(st.catalog_path(gone)):
            return gone
    return name


def _require_fresh(fs: FeatureSet, dataset: Any) -> None:
    from featstore import freshness

    # every layer column, narrowed to those served that the data still has (one gone is stale)
    whole = load_source(dataset, (), default_label=fs.catalog.label_column or DEFAULT_LABEL_COLUMN)
    present = set(next(iter(whole.splits.values())).column_names)
    source = replace(whole, layers=[layer for layer in fs.layers if layer in present],
                     patterns=tuple(glob.escape(layer) for layer in fs.layers))
    report = freshness.status(source, _featurizers_for(source.name, (), fs.store), fs.store)
    served = {r.slot for r in fs.catalog.rows} | {(s, fs.catalog.label_column, "labels") for s in fs.catalog.splits}
    bad = [s for s in report.slots if s.state != "fresh" and (s.split, s.layer, s.featurizer) in served]
    if bad:
        fs.close()
        lines = "; ".join(f"{s.split}/{s.layer}/{s.featurizer}: {s.state}, {s.reason}" for s in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        # a build of any featurizer writes the labels it lacks
        specs = sorted({s.featurizer for s in bad} - {"labels"}) or fs.featurizers
        raise StaleError(f"{len(bad)} catalogued features of {fs.dataset!r} are not fresh for the current data and "
                         f"featurizer code: {lines}{more}; rebuild them: {fs._how_to_build(specs)}")


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
            hint = f" ({layer!r} is a featurizer, not a layer: pass it as the featurizer)" if self._stores(layer) else ""
            raise NotFoundError(f"no layer {layer!r} in {self.dataset!r}{hint}; layers: {brief(self.layers)}")
        raise NotFoundError(f"no {spec} features of {layer!r} (split {split}) in {self.dataset!r}; build them: "
                            f"{self._how_to_build(spec, layer)}")

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
                what, how = f"the labels of split {row.split}", self._how_to_build(self.featurizers)
            else:
                what = f"{row.featurizer} features of {row.layer!r} (split {row.split})"
                how = self._how_to_build(row.featurizer, glob.escape(row.layer))
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

    def _how_to_build(self, specs: str | Iterable[str], layer: str | None = None) -> str:
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
                                f"or build this one: {self._how_to_build(canonical)}")
        hint = "ambiguous, pass one of" if same_name else "available"
        build = f"; or build it: {self._how_to_build(canonical)}" if canonical and not same_name else ""
        raise NotFoundError(f"no featurizer {spec!r} in {self.dataset!r}; {hint}: {', '.join(same_name or available)}"
                            f"{build}")


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


def _devices(devices: tuple[str, ...], device: str, workers: int, scheduler: str | None) -> tuple[str, ...]:
    """The devices of a one-worker-per-device build: those given (each checked), or every visible
    GPU for `device="cuda"` when there are several (and no other cluster was asked for); else ()."""
    from featstore import device as devs

    devices = tuple(map(check_device, devices))
    if devices and (workers or scheduler):
        raise FeatstoreError("give --devices, or --workers / --scheduler, not both")
    if not devices and device == "cuda" and not (workers or scheduler):
        prefetch_triton()  # while torch is imported: the build launches the Triton kernel here
        import torch

        count = torch.cuda.device_count()
        devices = tuple(f"cuda:{i}" for i in range(count)) if count > 1 else ()
        if devices and importlib.util.find_spec("distributed") is None:
            log.warning("%d GPUs visible, but a build over several needs Dask (pip install 'featstore[dask]'); "
                        "using cuda:0 only", count)
            devices = ()
    if len(set(devices)) < len(devices) and not all(d == "cpu" for d in devices):
        raise FeatstoreError(f"--devices names a device twice: {','.join(devices)}")
    return tuple(devs.resolve(d) for d in devices)


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


def _featurizers_for(name: str, featurizers: Iterable[str], store: Store | None, dtype: str = "float32") -> tuple:
    """The featurizers asked for; else the ones the store's catalog of `name` holds (as built: their
    specs name their dtype); else build's default. `dtype` as for `build`, for the others."""
    specs, catalogued, modules = names(featurizers), False, {}
    if not specs and store is not None and (catalog := store.read_catalog(name)) is not None:
        specs, catalogued, modules = tuple(sorted({r.featurizer for r in catalog.rows})), True, catalog.modules
    dtype = "float32" if catalogued else dtype
    bound = []
    for spec in specs or DEFAULT_FEATURIZERS:
        try:
            bound.append(parse_spec(spec, dtype))
        except UnknownFeaturizer as e:
            if not catalogued:
                raise
            # one of the user's own, defined in a module this process has not imported
            module = modules.get(spec.partition(":")[0])
            how = (f"the build that made them had it from module {module!r}: add --import {module} (run where that "
                   "module imports; in Python, import it first)" if module else
                   "name the module that does with --import MODULE (in Python, import it first)")
            raise UnknownFeaturizer(
                f"the store holds features of {name!r} from featurizer {spec!r}, which no module imported here "
                f"registers: {how}, or pass the featurizer as --featurizer module.path:function{e.broken}",
                e.broken) from e
    return tuple({b.spec: b for b in bound}.values())


def status(dataset: Any, featurizers: str | Iterable[str] = (), *, layers: str | Iterable[str] = (),
           store: str | None = None, dtype: str = "float32", progress: bool = True):
    """What `build` would compute for `dataset` and why: a `freshness.StatusReport` with one slot per
    (split, layer, featurizer) of the current data and code, each fresh, stale (with the reason)
    or missing. Featurizers default to those the store holds for the dataset; `dtype` as for
    `build` (the stored dtype of `featurizers` whose spec sets none). `progress` (as for
    `build`): while it hashes columns the digest cache does not vouch for."""
    from featstore import freshness

    st = Store.open(store or default_store())
    try:
        source = load_source(dataset, names(layers), default_label=_catalogued_label(st, dataset))
    except DatasetError as e:  # deleted data whose features the store still catalogues: say what to do
        path = os.path.expanduser(str(dataset)) if isinstance(dataset, (str, os.PathLike)) else "://"
        name = catalogued_name(st, dataset) if "://" not in path and not os.path.exists(path) else ""
        if not name or not st.storage.exists(st.catalog_path(name)):
            raise
        raise DatasetError(f"{e}; the store {st.location} still holds its features: if the data is gone for good, "
                           f"`featstore forget --dataset {name}` drops them (then `featstore gc` frees them)") from e
    return freshness.status(source, _featurizers_for(source.name, featurizers, st, dtype), st, progress)


def lock(dataset: Any, featurizers: str | Iterable[str] = (), *, layers: str | Iterable[str] = (),
         store: str | None = None, dtype: str = "float32", progress: bool = True) -> dict:
    """The lockfile contents for `dataset` (see `featstore lock`); uses the store, if there is one,
    for the digest cache and the default featurizers. `dtype` and `progress` as for `status`."""
    from featstore import freshness

    location = store or default_store()
    try:
        st = Store.open(location)
    except FeatstoreError:
        st = None
    source = load_source(dataset, names(layers), default_label=_catalogued_label(st, dataset))
    return freshness.make_lock(source, _featurizers_for(source.name, featurizers, st, dtype), st, progress)


def status_against_lock(lock_path: str, dataset: Any = None, *, layers: str | Iterable[str] = (),
                        progress: bool = True):
    """`status` against a lockfile instead of a store (see `featstore status --lock`); `layers`
    default to the globs the lockfile was written with; `progress` as for `status`."""
    from pathlib import Path

    from featstore import freshness

    try:
        raw = Path(lock_path).read_bytes()
    except OSError as e:
        raise FeatstoreError(f"cannot read lockfile {lock_path}: {e.strerror or e}; write one with `featstore lock`") from e
    lock = freshness.read_lock(raw, lock_path)
    labels = lock.get("labels") or {}
    layers = names(layers) or tuple(lock.get("layers") or ())
    source = load_source(lock["dataset"] if dataset is None else dataset, layers,
                         default_label=labels.get("column") or DEFAULT_LABEL_COLUMN)
    return freshness.status_against_lock(source, lock, progress)


def verify(store: str | None = None, *, sample: float = 1.0, recompute: float = 0.0, repair: bool = False,
           seed: int | None = None, progress: bool = True):
    """Check the store's entries chunk by chunk (see `featstore verify`); an `integrity.VerifyReport`.
    `progress` as for `build`."""
    from featstore import integrity

    return integrity.verify(Store.open(store or default_store()), sample, recompute, repair, seed, progress)


def gc(store: str | None = None, *, dry_run: bool = False, max_size: int | None = None, keep_days: float = 0.0):
    """Remove unreferenced, then least recently used entries (see `featstore gc`); a `garbage.GcReport`."""
    from featstore import garbage

    if max_size is not None and not max_size >= 0 or not keep_days >= 0:
        raise ValueError(f"gc needs max_size >= 0 (bytes) and keep_days >= 0, got {max_size!r} and {keep_days!r}")
    return garbage.gc(Store.open(store or default_store()), dry_run, max_size, keep_days)


def forget(dataset: Any, store: str | None = None, *, splits: str | Iterable[str] = (),
           layers: str | Iterable[str] = (), featurizers: str | Iterable[str] = (), dry_run: bool = False):
    """Drop `dataset`'s features from its catalog (all, or those of `splits`, `layers` globs and
    `featurizers` names or specs), so that `gc` frees the entries no other dataset uses; see
    `featstore forget`. A `garbage.ForgetReport`."""
    from featstore import garbage

    st = Store.open(store or default_store())
    return garbage.forget(st, catalogued_name(st, dataset), names(splits), names(layers), names(featurizers), dry_run)
