"""`featstore` commands: parse options, call the API, print. No logic worth testing lives here.

Errors print as one line on stderr and exit 2 (1 is reserved for "ran fine, answer is no", e.g. a
future `status` finding stale entries); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import fnmatch
import json
import sys

import click

from featstore.config import default_store
from featstore.errors import FeatstoreError

STORE_HELP = "Store directory. [env: FEATSTORE_STORE; default: $FEATSTORE_HOME/store, ~/.cache/featstore/store]"


class _Group(click.Group):
    """Turns FeatstoreError into one clear line and a non-zero exit, unless --debug."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeatstoreError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"Error: {e}", err=True)
            sys.exit(e.exit_code)


def _store_option(f):
    return click.option("--store", envvar="FEATSTORE_STORE", default=None, help=STORE_HELP)(f)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="featstore")
def main(debug: bool) -> None:
    """featstore: compute per-layer features of a dataset once, load them in every experiment.

    \b
    featstore datasets make 1k                 # a synthetic 1,000-row x 128-layer dataset
    featstore build --dataset 1k               # stats + svd for every layer column
    featstore build --dataset ./saved --featurizer raw --featurizer svd:k=32 --layers 'layer_0*'
    featstore ls --dataset 1k                  # what the store holds

    In Python: fs = featstore.open("1k"); fs.load("layer_017", "svd", split="train").
    """


@main.command()
@click.option("--dataset", "-d", required=True,
              help="Preset name (sanity, 1k, 10k), save_to_disk directory, directory or glob of "
                   "parquet/arrow files, or a Hugging Face Hub id.")
@click.option("--featurizer", "-f", "featurizers", multiple=True, metavar="SPEC",
              help="Featurizer spec, repeatable: raw, stats, svd, svd:k=32. [default: stats, svd]")
@click.option("--layers", "-l", multiple=True, metavar="GLOB",
              help="Layer columns to use, repeatable glob ('layer_0*'). [default: every numeric "
                   "tensor-valued column except the label column]")
@click.option("--label-column", default=None, help="Label column. [default: category_label, if present]")
@click.option("--device", default="auto", show_default=True, help="auto (GPU if torch sees one), cpu, cuda, cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="Stored dtype of features whose spec sets none (computation stays float32).")
@_store_option
@click.option("--rehash", is_flag=True,
              help="Hash every column, even where the digest cache (kept while the dataset files' inode, "
                   "size and mtime are unchanged) vouches for it.")
@click.option("--json", "as_json", is_flag=True, help="Print the build summary as JSON.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
def build(dataset, featurizers, layers, label_column, device, dtype, store, rehash, as_json, progress):
    """Compute the features the store lacks for DATASET; reuse every entry it already holds.

    Entries are keyed by a hash of the column's bytes and the featurizer's identity, so a second
    build computes nothing, and datasets sharing a layer share its entries.
    """
    from featstore.api import DEFAULT_FEATURIZERS
    from featstore.api import build as run_build

    report = run_build(dataset, featurizers or DEFAULT_FEATURIZERS, layers=layers, label_column=label_column,
                       store=store, device=device, dtype=dtype, rehash=rehash, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
        return
    s = report.seconds
    where = f" on {report.device}" if report.computed else ""
    click.echo(f"built {report.dataset} in {report.store}{where}")
    click.echo(f"  entries  {report.computed} computed, {report.reused} reused")
    click.echo(f"  written  {_size(report.bytes_written)}")
    click.echo("  seconds  " + "  ".join(f"{k} {s[k]:.2f}" for k in ("plan", "hash", "read", "compute", "write", "total")))


@main.command(name="ls")
@click.option("--dataset", "-d", default=None, help="Only this dataset (as given to build).")
@click.option("--split", default=None, help="Only this split.")
@click.option("--layer", "-l", default=None, metavar="GLOB", help="Only layers matching GLOB.")
@click.option("--featurizer", "-f", default=None, metavar="NAME", help="Only this featurizer (name or spec).")
@_store_option
@click.option("--json", "as_json", is_flag=True,
              help="One JSON list of {dataset, split, layer, featurizer, shape, dtype, nbytes, key, created}.")
def ls(dataset, split, layer, featurizer, store, as_json):
    """List the features the store holds, one row per (dataset, split, layer, featurizer)."""
    from featstore.sources import dataset_id
    from featstore.store import Store

    st = Store.open(store or default_store())
    wanted = dataset_id(dataset) if dataset else None
    rows = [
        {"dataset": c.dataset, "split": r.split, "layer": r.layer, "featurizer": r.featurizer,
         "shape": list(r.shape), "dtype": r.dtype, "nbytes": r.nbytes, "key": r.key, "created": r.created}
        for c in st.catalogs() if wanted in (None, c.dataset)
        for r in c.rows
        if (split in (None, r.split) and (layer is None or fnmatch.fnmatch(r.layer, layer))
            and featurizer in (None, r.featurizer, r.featurizer.partition(":")[0]))
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo(f"no features{' of ' + wanted if wanted else ''} in {st.location}", err=True)
        return
    header = ("dataset", "split", "layer", "featurizer", "shape", "dtype", "size", "key", "created")
    table = [header] + [
        (_short_dataset(r["dataset"]), r["split"], r["layer"], r["featurizer"], "x".join(map(str, r["shape"])),
         r["dtype"], _size(r["nbytes"]), r["key"][:12], r["created"].replace("+00:00", "Z"))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    total = sum(r["nbytes"] for r in rows)
    sys.stdout.flush()  # the total goes to stderr: keep it after the table when both reach a terminal
    click.echo(f"{len(rows)} entries, {_size(total)}", err=True)


@main.command(name="featurizers")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: name, params, version, per_row, doc.")
def featurizers_cmd(as_json):
    """List the featurizers: built-ins, entry-point plugins, with parameters and docs.

    \b
    Spec syntax: NAME[:key=value,...] or module.path:function[:key=value,...]; every spec also
    takes dtype=float32|float16|bfloat16. Add your own with @featstore.featurizer("name").
    """
    from featstore.featurizers import available

    found = available()
    if as_json:
        click.echo(json.dumps([{"name": f.name, "params": f.params, "version": f.version, "per_row": f.per_row,
                                "doc": f.doc} for f in found.values()], indent=1))
        return
    for f in found.values():
        params = ", ".join(f"{k}={v}" for k, v in f.params.items()) or "no parameters"
        click.echo(f"{f.name}  ({params}; version {f.version})")
        for line in f.doc.splitlines():
            click.echo(f"    {line}")


@main.group()
def datasets():
    """The built-in synthetic datasets (presets)."""


@datasets.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def datasets_ls(as_json):
    """List presets, their size, and where they are generated."""
    from featstore import presets

    out = []
    for p in presets.PRESETS.values():
        path = presets.default_dir(p.name)
        out.append({"name": p.name, "rows": p.rows, "layers": p.layers, "shape": [p.dim, p.dim],
                    "nbytes": p.nbytes, "path": str(path), "generated": (path / "dataset_dict.json").exists(),
                    "signal_layers": presets.signal_layers(p.layers)})
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    for p, d in zip(presets.PRESETS.values(), out):
        state = "generated" if d["generated"] else "not generated"
        click.echo(f"{p.name:7} {p.description:42} {_size(p.nbytes):>9}  {state}: {d['path']}")


@datasets.command(name="make")
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory to save to. [default: $FEATSTORE_HOME/datasets/NAME]")
def datasets_make(name, out):
    """Generate preset NAME (sanity, 1k, 10k) with datasets' save_to_disk; deterministic."""
    from featstore import presets
    from featstore.errors import DatasetError

    if presets.get(name) is None:
        raise DatasetError(f"unknown preset {name!r}; presets: {', '.join(presets.PRESETS)}")
    path = presets.make(name, out or presets.default_dir(name), progress=True)
    click.echo(f"{presets.get(name).name}: {presets.get(name).description} saved to {path}")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _short_dataset(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


if __name__ == "__main__":
    main()
