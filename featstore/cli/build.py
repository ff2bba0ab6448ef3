"""`featstore build` and `featstore ls`: compute what the store lacks; list what it holds."""

from __future__ import annotations

import json
import sys

import click

from featstore.cli.common import (
    DTYPES,
    PROGRESS_HELP,
    counted,
    human_size,
    import_option,
    print_table,
    short_name,
    store_option,
)
from featstore.config import default_store
from featstore.errors import StoreError, brief
from featstore.interrupts import ends_at_once


@click.command()
@click.option("--dataset", "-d", required=True,
              help="Preset name (sanity, 1k, 10k), save_to_disk directory, directory or glob of "
                   "parquet/arrow files, or a Hugging Face Hub id.")
@click.option("--featurizer", "-f", "featurizers", multiple=True, metavar="SPEC",
              help="Featurizer spec, repeatable: raw, stats, svd, svd:k=32, or a function of yours as "
                   "module:function[:param=value] (feats:topk:k=8; see featstore featurizers). "
                   "[default: stats, svd]")
@click.option("--layers", "-l", multiple=True, metavar="GLOB",
              help="Layer columns to use, repeatable glob ('layer_0*'). [default: every numeric "
                   "tensor-valued column except the label column]")
@click.option("--label-column", default=None,
              help="Label column: class ids (integers, ClassLabel) or text, numbered in sorted order. "
                   "[default: category_label, if present]")
@click.option("--device", default="auto", show_default=True,
              help="auto (a GPU if torch sees one), cpu (columns side by side, a core each), cuda (every "
                   "visible GPU, one worker each), cuda:N.")
@click.option("--devices", default=None, metavar="LIST",
              help="Spread the layers over one worker per device, e.g. cuda:0,cuda:1 (a local Dask cluster).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="Stored dtype of features whose spec sets none (computation stays float32).")
@import_option
@store_option
@click.option("--rehash", is_flag=True,
              help="Hash every column, even where the digest cache vouches for it (the files' inode, size, "
                   "mtime and ctime are unchanged, or a changed file's rows of the column hash as before).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Spread the layers over a local Dask cluster of N worker processes.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Spread the layers over the Dask cluster at ADDRESS (tcp://host:8786); workers must reach "
                   "the store and the dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print the build summary as JSON.")
@click.option("--progress/--no-progress", default=True, help=PROGRESS_HELP)
def build(dataset, featurizers, layers, label_column, device, devices, dtype, store, rehash, workers, scheduler,
          as_json, progress):
    """Compute the features the store lacks for DATASET; reuse every entry it already holds.

    Entries are keyed by a hash of the column's bytes and the featurizer's identity, so a second
    build computes nothing, and datasets sharing a layer share its entries.

    \b
      featstore build -d 1k                                # stats + svd of every layer column
      featstore build -d ./adapters -f svd:k=32 -l 'model.layers.*.q_proj'
      featstore build -d ./adapters -f feats:mine --dtype float16 --device cuda:1
      featstore status -d ./adapters                       # what a build would compute, and why
    """
    from featstore.api import DEFAULT_FEATURIZERS
    from featstore.api import build as run_build

    report = run_build(dataset, featurizers or DEFAULT_FEATURIZERS, layers=layers, label_column=label_column,
                       store=store, device=device, dtype=dtype, rehash=rehash, progress=progress,
                       workers=workers or 0, scheduler=scheduler,
                       devices=tuple(d.strip() for d in devices.split(",") if d.strip()) if devices else ())
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
        return
    s = report.seconds
    where = f" on {report.device}" if report.computed else ""
    click.echo(f"built {report.dataset} in {report.store}{where}")
    why = ", ".join(f"{n}{' with' * reason[:1].isdigit()} {reason}"  # 8 with 64 rows appended to 256
                    for reason, n in sorted(report.reasons.items()))
    click.echo(f"  entries  {report.computed} computed{f' ({why})' if why else ''}, {report.reused} reused")
    click.echo(f"  written  {human_size(report.bytes_written)}")
    if report.labels:
        click.echo(f"  labels   of split{'s' * (len(report.labels) > 1)} {', '.join(report.labels)}: new or changed")
    if report.dropped:
        columns = sorted({f"{split}/{layer}" for split, layer, _ in report.dropped})
        click.echo(f"  dropped  {counted(len(report.dropped), 'feature')} of columns gone from the dataset "
                   f"({brief(columns)}); `featstore gc` frees their entries")
    phases = "  ".join(f"{k} {s[k]:.2f}" for k in ("plan", "hash", "read", "compute", "write"))
    click.echo(f"  seconds  {s['total']:.2f} in all; per phase, summed over threads: {phases}")


@click.command(name="ls")
@click.option("--dataset", "-d", default=None, help="Only this dataset (as given to build).")
@click.option("--split", default=None, help="Only this split.")
@click.option("--layers", "--layer", "-l", "layers", multiple=True, metavar="GLOB",
              help="Only these layers: a glob, or a layer's own name; repeatable, as status and forget take them.")
@click.option("--featurizer", "-f", default=None, metavar="NAME", help="Only this featurizer (name or spec).")
@store_option
@click.option("--summary", "-s", is_flag=True,
              help="One row per (dataset, featurizer): splits, layers, entries, size, when last built.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON list of {dataset, split, layer, featurizer, shape, dtype, nbytes, key, created, "
                   "stored}; with --summary, of {dataset, featurizer, splits, layers, entries, nbytes, removed, "
                   "created}.")
def ls(dataset, split, layers, featurizer, store, summary, as_json):
    """List the features the store holds, one row per (dataset, split, layer, featurizer), and each
    split's labels (featurizer `labels`, layer the label column); an entry gc or verify --repair
    removed since is listed as removed. --summary: one row per (dataset, featurizer)."""
    from concurrent.futures import ThreadPoolExecutor

    from featstore.api import catalogued_name
    from featstore.manifest import layer_matches, natural_key
    from featstore.store import Store

    st = Store.open(store or default_store())
    wanted = catalogued_name(st, dataset) if dataset else None
    rows = [
        {"dataset": c.dataset, "split": r.split, "layer": r.layer, "featurizer": r.featurizer,
         "shape": list(r.shape), "dtype": r.dtype, "nbytes": r.nbytes, "key": r.key, "created": r.created}
        for c in st.catalogs() if wanted in (None, c.dataset)
        for r in sorted(c.rows + _label_rows(c), key=lambda r: (r.split, natural_key(r.layer), r.featurizer))
        if (split in (None, r.split) and (not layers or any(layer_matches(r.layer, g) for g in layers))
            and featurizer in (None, r.featurizer, r.featurizer.partition(":")[0]))
    ]
    # gc --max-size evicts catalogued entries: say which are gone
    with ends_at_once(), ThreadPoolExecutor(16) as pool:
        for row, stored in zip(rows, pool.map(st.has_entry, [r["key"] for r in rows])):
            row["stored"] = stored
        labels = [r for r in rows if r["featurizer"] == "labels" and r["stored"]]
        for row, created in zip(labels, pool.map(lambda r: _created(st, r["key"]), labels)):
            row["created"] = created
    listed = _summarise(rows) if summary else rows
    if as_json:
        click.echo(json.dumps(listed, indent=1))
        return
    if not rows:
        filters = [f"{flag} {value}" for flag, values in (("--split", [split]), ("--layers", layers),
                                                           ("--featurizer", [featurizer])) for value in values if value]
        catalogs = st.catalogs()
        some = filters and any(c.rows for c in catalogs if wanted in (None, c.dataset))
        unknown = wanted and all(c.dataset != wanted for c in catalogs)  # a typo, or another store's dataset
        click.echo(f"no features{' of ' + wanted if wanted else ''} in {st.location}"
                   + (f" match {' '.join(filters)}; `featstore ls --summary` lists what it holds" if some else "")
                   + (f" (it holds: {brief([c.dataset for c in catalogs]) or 'none'})"
                      if unknown else ""), err=True)
        return
    if summary:
        print_table([("dataset", "featurizer", "splits", "layers", "entries", "size", "removed", "last built")] + [
            (short_name(r["dataset"]), r["featurizer"], ",".join(r["splits"]), str(r["layers"]), str(r["entries"]),
             human_size(r["nbytes"]), str(r["removed"]), r["created"].replace("+00:00", "Z")) for r in listed])
    else:
        print_table([("dataset", "split", "layer", "featurizer", "shape", "dtype", "size", "key", "created")] + [
            (short_name(r["dataset"]), r["split"], r["layer"], r["featurizer"], "x".join(map(str, r["shape"])),
             r["dtype"], human_size(r["nbytes"]) if r["stored"] else "removed", r["key"][:12],
             r["created"].replace("+00:00", "Z")) for r in rows])
    held = [r for r in rows if r["stored"]]
    gone = len(rows) - len(held)
    sys.stdout.flush()  # the total goes to stderr: keep it after the table when both reach a terminal
    click.echo(f"{counted(len(held), 'entry')}, {human_size(sum(r['nbytes'] for r in held))}" + (
        f"; {counted(gone, 'entry')} removed by gc or verify --repair (featstore build computes "
        f"{'it' if gone == 1 else 'them'} again)" if gone else ""), err=True)


def _label_rows(catalog) -> tuple:
    """Each labelled split's labels as a catalog row: an int64 entry of one value per row."""
    from featstore.manifest import CatalogRow

    return tuple(CatalogRow(name, catalog.label_column, "labels", info.labels, (info.rows,), "int64", info.rows * 8, "")
                 for name, info in catalog.splits.items() if info.labels)


def _created(st, key: str) -> str:
    """When entry `key` was written, from its metadata ("" where that cannot be read: `verify` says why)."""
    try:
        return st.entry_info(key).created
    except StoreError:
        return ""


def _summarise(rows: list[dict]) -> list[dict]:
    """`ls` rows grouped by (dataset, featurizer): sizes count the entries still stored."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["featurizer"]), []).append(r)
    return [{"dataset": d, "featurizer": f, "splits": sorted({r["split"] for r in g}),
             "layers": len({r["layer"] for r in g}), "entries": len(g),
             "nbytes": sum(r["nbytes"] for r in g if r["stored"]), "removed": sum(not r["stored"] for r in g),
             "created": max(r["created"] for r in g)} for (d, f), g in sorted(groups.items())]
