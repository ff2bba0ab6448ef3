"""The public Python surface: `build`, `open` (a `featureset.FeatureSet`), `status`, `lock`, `verify`, `gc`, `forget`."""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import shlex
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from featstore import builder, planning, presets
from featstore.commit import LOCK_TIMEOUT
from featstore.config import default_store
from featstore.device import check_device
from featstore.digest_cache import cached_digests
from featstore.errors import (
    DatasetError,
    FeatstoreError,
    NotFoundError,
    ReadOnlyStore,
    StaleError,
    StoreError,
    UnknownFeaturizer,
)
from featstore.featureset import FeatureSet, names
from featstore.featurizers import parse_spec
from featstore.report import BuildReport
from featstore.sources import DEFAULT_LABEL_COLUMN, dataset_id, load_source
from featstore.store import Store
from featstore.svdvals import prefetch_triton

log = logging.getLogger(__name__)

DEFAULT_FEATURIZERS = ("stats", "svd")


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
) -> BuildReport:
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
    build_plan = planning.plan(source, bound, cache, started)  # every check first: a failed build creates no store
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
            reading.enter_context(st.storage.lock("store", shared=True, timeout=LOCK_TIMEOUT))  # no gc now
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
                         f"featurizer code: {lines}{more}; rebuild them: {fs.how_to_build(specs)}")


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
        gone = "://" not in path and not os.path.exists(path) and presets.get(path) is None  # a preset is made anew
        name = catalogued_name(st, dataset) if gone else ""
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
