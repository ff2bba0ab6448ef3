"""Plan a build: check every chosen column and featurizer before anything is written, and say why
an entry is stale.

`plan` checks every chosen column (shape, dtype, nulls, raggedness: offsets and validity bitmaps
only) and every featurizer's output shape, so a bad column or featurizer fails before the store
changes; it copies no values. `builder.execute` runs the plan; `freshness` (status, lock) makes the
same checks and gives the same reasons (`why_stale`) without building.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from featstore.columns import ColumnLayout
from featstore.digest_cache import known_layouts
from featstore.errors import ColumnError, DatasetError, FeatstoreError
from featstore.featurizers import BoundFeaturizer
from featstore.identity import changed_parts
from featstore.keys import KEY_VERSION, check_name, entry_key, featurizer_identity
from featstore.manifest import CatalogRow
from featstore.sources import Source

# Labels are stored as an entry like any other, keyed by this pseudo-featurizer.
LABELS_IDENTITY = featurizer_identity("labels", {}, "1")


@dataclass(frozen=True)
class Unit:
    """One (split, layer) column of the build and what it holds."""

    split: str
    layer: str
    layout: ColumnLayout


@dataclass(frozen=True)
class BuildPlan:
    source: Source
    featurizers: tuple[BoundFeaturizer, ...]
    units: tuple[Unit, ...]  # layer by layer, each layer's splits together
    seconds: float  # spent checking
    labels: dict[str, ColumnLayout] = field(default_factory=dict)  # split -> its label column
    cache: tuple | None = None  # cached_digests() taken before the plan read any column


def plan(source: Source, featurizers: tuple[BoundFeaturizer, ...], cache: tuple | None = None,
         started: float | None = None) -> BuildPlan:
    """Check every chosen column of every split and every featurizer's output shape for it.
    Raises (naming the column, row or featurizer) before anything is written; copies no values.
    `cache` is `cached_digests(store, source)`, taken before any column is read: a column whose
    split's files it vouches for is not read again (a build checked it), and `execute` keeps it,
    so that what the build learns is cached with the files' stats from before it read them.
    `started`: when planning began, if before `cache` was taken (it may hash changed files)."""
    started = started or time.perf_counter()
    checked = known_layouts(cache)
    if not featurizers:
        raise FeatstoreError("no featurizers requested")
    check_names(source)
    units = []
    for layer in source.layers:
        for split_name, split in source.splits.items():
            layout = checked.get((split_name, layer))
            if layout is None:
                layout = split.layout(layer)
                split.release()  # what the check paged in (list offsets, and read-ahead around them)
            for f in featurizers:
                check_output(f, layer, split_name, layout.value_shape)
            units.append(Unit(split_name, layer, layout))
    labels = {}  # split -> its label column's layout, for the digest cache
    for split_name, split in source.splits.items():
        if split.has_labels(source.label_column):
            layout = checked.get((split_name, source.label_column))
            if layout is None:
                try:
                    split.labels(source.label_column)  # class ids, or an error now: before anything is written
                except DatasetError as e:
                    raise DatasetError(f"split {split_name}: {e}") from None
                # text labels have no tensor layout to cache: every build encodes them again
                layout = None if split.label_vocabulary else split.layout(source.label_column)
            if layout is not None:
                labels[split_name] = layout
    return BuildPlan(source, tuple(featurizers), tuple(units), time.perf_counter() - started, labels, cache)


def check_names(source: Source) -> None:
    """The error a build stops with where a split or chosen layer has a name the store cannot
    record (`keys.check_name`): `status` and `lock` stop with it too."""
    for kind, names in (("split", source.splits), ("layer", source.layers)):
        for name in names:
            try:
                check_name(kind, name)
            except ValueError as e:
                other = " (or choose the other layers with --layers GLOB)" if kind == "layer" else ""
                raise ColumnError(f"{e}{other}") from None


def check_output(f: BoundFeaturizer, layer: str, split: str, value_shape: tuple[int, ...]) -> tuple[int, ...]:
    """`f`'s output shape for rows of `value_shape`, or the error a build stops with, naming the
    column (`svd` of a vector column, `svd:k=0`)."""
    try:
        return f.output_shape(value_shape)
    except FeatstoreError as e:
        raise type(e)(f"featurizer {f.spec} cannot use column {layer!r} (split {split}): {e}") from e


def extends(old: CatalogRow | None, f: BoundFeaturizer, rows: int) -> bool:
    """Whether a column of `rows` rows may extend the rows catalogued entry `old` was computed
    from: per-row featurizer, same identity, fewer rows. Whether those rows are a byte-identical
    prefix is checked while hashing (the prefix digest must be `old.input_digest`)."""
    return bool(old and old.shape and f.featurizer.per_row and old.identity == f.identity and 0 < old.shape[0] < rows)


def why_stale(old: CatalogRow, input_digest: str, identity: dict) -> str:
    """Why the catalogued `old` entry is not the one for `input_digest` and `identity`: the changes,
    joined with "; " (input bytes, featurizer code, params, version, format), or "" if it is."""
    if old.key == entry_key(input_digest, identity):
        return ""
    reasons = []
    if old.input_digest != input_digest:
        reasons.append("input bytes changed")
    then = old.identity
    if then.get("params") != identity["params"]:
        reasons.append("params changed")
    if then.get("version") != identity["version"]:
        code = str(then.get("version", "")).startswith("code:") and identity["version"].startswith("code:")
        names = changed_parts(then.get("code"), identity.get("code"))
        reasons.append(("featurizer code changed" + (f" ({', '.join(names)})" if names else ""))
                       if code else "version changed")
    if not reasons:  # the same input and identity under another key: the key scheme itself changed
        reasons.append(f"format changed (key version {KEY_VERSION})")
    return "; ".join(reasons)
