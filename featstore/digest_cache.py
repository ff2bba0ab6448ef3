"""The store's digest cache of a dataset: per split, the stats of its files when a build began and,
per column, its digest, its checked layout and the digests of each file's rows. A build or
`status` trusts a split's entries while its files' stats all match, so it neither hashes nor
checks those columns again; when a few files changed, a column whose rows in them hash as before
is still trusted. Stored as `digests/<dataset-slug>.json` (Store.read_digests / write_digests).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from featstore.columns import ColumnLayout
from featstore.errors import ColumnError
from featstore.interrupts import deferred_ctrl_c, waited
from featstore.keys import ColumnDigests, column_digests
from featstore.progress import progress_bar
from featstore.sources import Source
from featstore.store import Store


def cached_digests(store: Store | None, source: Source, rehash: bool = False,
                   progress: bool = False) -> tuple[dict, dict, dict]:
    """(the store's digest cache of `source`, each split's file stats now, {split: {layer: digest}}
    that the cache vouches for). The cache vouches for every column of a split whose files all
    kept path, inode, size, mtime_ns and ctime_ns; when files holding at most half its rows changed, for each
    column whose rows in every changed file hash as they did (`Split.file_digest`), so that
    rewriting one file of a split hashes that file, not the split. For such a split the cache
    returned holds only those columns."""
    cached = {} if rehash or store is None else store.read_digests(source.name)
    stats = {name: split.file_stats() for name, split in source.splits.items()}
    trusted = {}
    for name, split in source.splits.items():
        old = cached.get(name)
        if stats[name] is None or old is None:
            continue
        if old.get("files") == stats[name]:
            trusted[name] = old["layers"]
            continue
        vouched = _vouched(split, old, stats[name], source.layers, f"{source.name} {name}" if progress else "")
        if vouched:
            trusted[name] = {layer: old["layers"][layer] for layer in vouched}
            cached[name] = {"files": old["files"], "layers": trusted[name],
                            **{part: {layer: old[part][layer] for layer in vouched} for part in ("layouts", "segments")}}
    return cached, stats, trusted


def _vouched(split, old: dict, stats: list[list], layers: list[str], progress: str = "") -> set[str]:
    """The `layers` whose rows in each file that changed since `old` (a split's digest cache) was
    written hash as they did then: unchanged columns, whose cached digest and layout still hold.
    With `progress` (what to call the split), a progress bar counts the columns compared."""
    segments = old.get("segments", {})
    if split.file_rows is None or len(stats) != len(old.get("files", ())):
        return set()
    changed = [i for i, (now_, then) in enumerate(zip(stats, old["files"])) if now_ != then]
    if 2 * sum(split.file_rows[i] for i in changed) > sum(split.file_rows):
        return set()  # a column that differs is hashed twice: worth it only for the smaller part of the split
    todo = [layer for layer in layers if layer in old.get("layers", {}) and layer in old.get("layouts", {})
            and len(segments.get(layer) or ()) == len(stats)]

    def unchanged(layer: str) -> bool:
        try:
            return all(split.file_digest(i, layer) == segments[layer][i] for i in changed)
        except ColumnError:  # the plan checks the whole column, and says what is wrong
            return False

    with deferred_ctrl_c("finishing the comparison of the changed files, then stopping") as interrupted, \
            ThreadPoolExecutor(min(os.cpu_count() or 1, 4), "featstore-vouch") as pool, \
            progress_bar(len(todo), f"{progress}: {len(changed)} changed file{'s' * (len(changed) > 1)}", "column",
                         bool(progress)) as bar:
        compared = [pool.submit(unchanged, layer) for layer in todo]
        for future in compared:
            waited([future], interrupted, pools=(pool,))
            bar.update()
        vouched = {layer for layer, same in zip(todo, compared) if same.result()}
    if interrupted:
        raise KeyboardInterrupt
    return vouched


def known_layouts(cache: tuple | None) -> dict[tuple[str, str], ColumnLayout]:
    """{(split, column): layout} that a build checked in files unchanged since (see `plan`)."""
    cached, _, trusted = cache or ({}, {}, {})
    return {(name, column): ColumnLayout(rows, tuple(shape), np.dtype(dtype))
            for name in trusted for column, (rows, shape, dtype) in cached[name].get("layouts", {}).items()}


def column_digest(split, layer: str, prefixes: Iterable[int] = ()) -> ColumnDigests:
    """Hash one column straight from its Arrow buffers (or parquet batches), a piece at a time
    (`Split.pieces`), unless its layout check hashed it (`Split.checked_digests`): its digest, and
    from the same pass those of its first rows for each of `prefixes` (keys.column_digests)."""
    hashed = None if prefixes else split.checked_digests(layer)
    if hashed is not None:
        return hashed
    layout, pieces = split.pieces(layer)
    return column_digests(pieces, layout.dtype, (layout.rows, *layout.value_shape), prefixes)


def updated_digests(cache: tuple, seen: dict[tuple[str, str], str], segments: dict[tuple[str, str], list[str]],
                    checked: Iterable[tuple[str, str, ColumnLayout]]) -> dict:
    """The digest cache after a build: `cache` (cached_digests() when it began: the files' stats
    then, so a file changed meanwhile is hashed again next time) with the digests `seen` of the
    columns it read ({(split, layer): digest}), the `segments` it took of each file's rows, and the
    layouts of the columns it `checked` ((split, column, layout)), so a later plan need not read
    them again. Splits not read from files have no cache."""
    cached, stats, trusted = cache
    digests = {name: {"files": files, "layers": dict(trusted.get(name, {})),
                      **{part: dict(cached[name].get(part, {})) if name in trusted else {}
                         for part in ("layouts", "segments")}}
               for name, files in stats.items() if files is not None}
    for (split_name, layer), digest in seen.items():
        if split_name in digests:
            digests[split_name]["layers"][layer] = digest
            if digest != trusted.get(split_name, {}).get(layer):  # the cached files' digests are of other rows
                digests[split_name]["segments"].pop(layer, None)
    for (split_name, layer), parts in segments.items():
        if split_name in digests:
            digests[split_name]["segments"][layer] = parts
    for split_name, column, layout in checked:
        if split_name in digests:
            digests[split_name]["layouts"][column] = [layout.rows, list(layout.value_shape), layout.dtype.str]
    return digests
