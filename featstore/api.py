"""The public Python surface: `build`, `open`, and the `FeatureSet` view of one dataset's features."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from featstore import builder
from featstore.config import default_store
from featstore.errors import FeatstoreError, NotFoundError
from featstore.featurizers import parse_spec
from featstore.manifest import Catalog, CatalogRow
from featstore.sources import dataset_id, load_source
from featstore.store import Store

DEFAULT_FEATURIZERS = ("stats", "svd")


def build(
    dataset: Any,
    featurizers: Iterable[str] = DEFAULT_FEATURIZERS,
    *,
    layers: Iterable[str] = (),
    label_column: str | None = None,
    store: str | None = None,
    device: str = "auto",
    dtype: str = "float32",
    rehash: bool = False,
    progress: bool = False,
) -> builder.BuildReport:
    """Compute the features of `dataset` the store lacks and catalogue them; see `featstore build`.

    `dataset` is anything `--dataset` accepts, or a `datasets.Dataset` / `DatasetDict`.
    `featurizers` are specs like `"svd:k=32"`; `layers` are globs over column names; `dtype` is
    the stored dtype of features whose spec does not set one (float32, float16, bfloat16).
    Column digests are cached while the dataset files' stats match; `rehash` hashes every column.
    """
    bound = tuple({b.spec: b for b in (parse_spec(s, dtype) for s in featurizers)}.values())
    source = load_source(dataset, tuple(layers), label_column, progress=progress)
    build_plan = builder.plan(source, bound)  # every check first: a failed build creates no store
    return builder.execute(build_plan, Store.open(store or default_store(), create=True), device, progress, rehash)


def open(dataset: Any, store: str | None = None) -> FeatureSet:
    """The features the store holds for `dataset` (anything `--dataset` accepts; a plain
    `datasets.Dataset` counts as split `train`). Reads only the store, never the dataset."""
    location = store or default_store()
    st = Store.open(location)
    name = dataset_id(dataset)
    catalog = st.read_catalog(name)
    if catalog is None:
        known = ", ".join(c.dataset for c in st.catalogs()) or "none"
        raise NotFoundError(f"the store {location} holds no features of {name!r}; it holds: {known}")
    return FeatureSet(st, catalog)


class FeatureSet:
    """Read-only view of one dataset's catalogued features."""

    def __init__(self, store: Store, catalog: Catalog):
        self.store = store
        self.catalog = catalog
        self._rows = {r.slot: r for r in catalog.rows}
        self._featurizers = sorted({r.featurizer for r in catalog.rows})

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
        return sorted({r.layer for r in self.catalog.rows})

    @property
    def featurizers(self) -> list[str]:
        return list(self._featurizers)

    @property
    def label_names(self) -> list[str] | None:
        return list(self.catalog.label_names) if self.catalog.label_names else None

    def row(self, layer: str, featurizer: str, split: str = "train") -> CatalogRow:
        """The catalog row for (split, layer, featurizer); errors list what exists."""
        self._check_split(split)
        spec = self._match_featurizer(featurizer)
        if (split, layer, spec) in self._rows:
            return self._rows[(split, layer, spec)]
        if layer not in self.layers:
            raise NotFoundError(f"no layer {layer!r} in {self.dataset!r}; layers: {_brief(self.layers)}")
        raise NotFoundError(f"no {spec} features of {layer!r} (split {split}) in {self.dataset!r}; build them first")

    def load(self, layer: str, featurizer: str, split: str = "train"):
        """Features of one layer as a torch.Tensor of shape (n_rows, *feature_shape), stored dtype."""
        from featstore.device import from_stored

        row = self.row(layer, featurizer, split)
        return from_stored(self.store.read_entry(row.key), row.dtype)

    def labels(self, split: str = "train"):
        """The split's label column as an int64 torch.Tensor."""
        import torch

        self._check_split(split)
        key = self.catalog.splits[split].labels
        if key is None:
            raise NotFoundError(f"{self.dataset!r} was built without a label column (see --label-column)")
        return torch.from_numpy(self.store.read_entry(key))

    def _check_split(self, split: str) -> None:
        if split not in self.catalog.splits:
            raise NotFoundError(f"no split {split!r} in {self.dataset!r}; splits: {', '.join(self.splits)}")

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
        hint = "ambiguous, pass one of" if same_name else "available"
        raise NotFoundError(f"no featurizer {spec!r} in {self.dataset!r}; {hint}: {', '.join(same_name or available)}")


def _brief(names: list[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
