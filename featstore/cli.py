"""`featstore` commands: parse options, call the API, print. No logic worth testing lives here.

Errors print as one line on stderr and exit 2 (1 is reserved for "ran fine, answer is no", e.g. a
future `status` finding stale entries); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys

import click

from featstore import config
from featstore.config import default_store
from featstore.errors import FeatstoreError, StoreError, brief
from featstore.interrupts import ends_at_once

SHOWN_SKIPPED = 10  # features `verify --recompute` could not recompute, listed by name (--json: all)
DTYPES = ["float32", "float16", "bfloat16"]
STORE_HELP = ("Store: a directory or an fsspec URL (s3://bucket/prefix, memory://...). "
              "[env: FEATSTORE_STORE; default: $FEATSTORE_HOME/store, ~/.cache/featstore/store]")
PROGRESS_HELP = ("Show progress on stderr: a bar on a terminal; elsewhere (a job's log) a line at most every "
                 "FEATSTORE_PROGRESS_SECONDS (30) seconds.")


class _Group(click.Group):
    """Turns FeatstoreError into one clear line and a non-zero exit, unless --debug."""

    def invoke(self, ctx):
        config.SECOND_CTRL_C_EXITS = True  # the process is ours
        try:
            return super().invoke(ctx)
        except FeatstoreError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"Error: {e}", err=True)
            sys.exit(e.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:  # click would say "Aborted!" and exit 1, which status keeps for stale
            built = (" A build keeps and catalogues the columns it finished; the next build computes the rest."
                     if ctx.invoked_subcommand == "build" else "")
            click.echo(f"\nInterrupted.{built}", err=True)
            sys.exit(130)  # 128 + SIGINT, as the shell reports it
        except BrokenPipeError:  # `featstore ls | head`: the reader has all it wants; end quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(141)  # what the shell reports for a command ended by SIGPIPE; never 1 ("stale")
        except Exception as e:  # a bug or an unforeseen failure: still exit 2, never 1 ("stale")
            if ctx.params.get("debug"):
                raise
            click.echo(f"Error: {e!r} (unexpected: rerun with --debug for the traceback)", err=True)
            sys.exit(2)


def _store_option(f):
    return click.option("--store", envvar="FEATSTORE_STORE", default=None, help=STORE_HELP)(f)


def _dtype_option(f):  # status and lock: what build's --dtype was
    return click.option("--dtype", type=click.Choice(DTYPES), default=None,
                        help="Stored dtype of the --featurizer specs that set none, as given to `featstore build`. "
                             "[default: float32]")(f)


def _import_featurizers(ctx, param, modules: tuple[str, ...]) -> None:
    from featstore.featurizers import import_modules

    import_modules(modules, "install it, or run featstore from the directory that holds it")
    ctx.meta["featstore.imports"] = modules  # for the build command status suggests


def _import_option(f):
    return click.option("--import", "modules", multiple=True, metavar="MODULE", expose_value=False,
                        callback=_import_featurizers,
                        help="Import this module first, repeatable: one that registers featurizers of yours with "
                             "@featstore.featurizer, so that the store's features of them are found by their "
                             "names (`--import myfeats` for ./myfeats.py).")(f)


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
    featstore status --dataset 1k              # fresh / stale (why) / missing; exit 1 if not all fresh
    featstore verify && featstore gc --max-size 20GB
    featstore forget --dataset ./adapters_v1 && featstore gc   # drop a dataset's features

    In Python: fs = featstore.open("1k"); fs.load("layer_017", "svd", split="train").
    """


@main.command()
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
@_import_option
@_store_option
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
    click.echo(f"  written  {_size(report.bytes_written)}")
    if report.labels:
        click.echo(f"  labels   of split{'s' * (len(report.labels) > 1)} {', '.join(report.labels)}: new or changed")
    if report.dropped:
        columns = sorted({f"{split}/{layer}" for split, layer, _ in report.dropped})
        click.echo(f"  dropped  {_count(len(report.dropped), 'feature')} of columns gone from the dataset "
                   f"({brief(columns)}); `featstore gc` frees their entries")
    phases = "  ".join(f"{k} {s[k]:.2f}" for k in ("plan", "hash", "read", "compute", "write"))
    click.echo(f"  seconds  {s['total']:.2f} in all; per phase, summed over threads: {phases}")


@main.command(name="ls")
@click.option("--dataset", "-d", default=None, help="Only this dataset (as given to build).")
@click.option("--split", default=None, help="Only this split.")
@click.option("--layers", "--layer", "-l", "layers", multiple=True, metavar="GLOB",
              help="Only these layers: a glob, or a layer's own name; repeatable, as status and forget take them.")
@click.option("--featurizer", "-f", default=None, metavar="NAME", help="Only this featurizer (name or spec).")
@_store_option
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
        _print_table([("dataset", "featurizer", "splits", "layers", "entries", "size", "removed", "last built")] + [
            (_short_dataset(r["dataset"]), r["featurizer"], ",".join(r["splits"]), str(r["layers"]), str(r["entries"]),
             _size(r["nbytes"]), str(r["removed"]), r["created"].replace("+00:00", "Z")) for r in listed])
    else:
        _print_table([("dataset", "split", "layer", "featurizer", "shape", "dtype", "size", "key", "created")] + [
            (_short_dataset(r["dataset"]), r["split"], r["layer"], r["featurizer"], "x".join(map(str, r["shape"])),
             r["dtype"], _size(r["nbytes"]) if r["stored"] else "removed", r["key"][:12],
             r["created"].replace("+00:00", "Z")) for r in rows])
    held = [r for r in rows if r["stored"]]
    gone = len(rows) - len(held)
    sys.stdout.flush()  # the total goes to stderr: keep it after the table when both reach a terminal
    click.echo(f"{_count(len(held), 'entry')}, {_size(sum(r['nbytes'] for r in held))}" + (
        f"; {_count(gone, 'entry')} removed by gc or verify --repair (featstore build computes "
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


DATASET_HELP = ("Preset name (sanity, 1k, 10k), save_to_disk directory, directory or glob of parquet/arrow "
                "files, or a Hugging Face Hub id.")


@main.command()
@click.option("--dataset", "-d", default=None, help=DATASET_HELP + " [default: every dataset the store holds]")
@click.option("--featurizer", "-f", "featurizers", multiple=True, metavar="SPEC",
              help="Featurizer spec, repeatable. [default: those the store holds for the dataset]")
@click.option("--layers", "-l", multiple=True, metavar="GLOB", help="Layer columns, repeatable glob. [default: all]")
@_dtype_option
@_import_option
@click.option("--lock", "lock_path", default=None, type=click.Path(dir_okay=False),
              help="Compare with this lockfile (see `featstore lock`) instead of a store: no store needed.")
@_store_option
@click.option("--all", "show_all", is_flag=True, help="List fresh entries too.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of reports, one per dataset; `update` is the command that brings it up to date.")
@click.option("--progress/--no-progress", default=True,
              help=PROGRESS_HELP + " It counts the columns hashed.")
def status(dataset, featurizers, dtype, layers, lock_path, store, show_all, as_json, progress):
    """Say, for every (split, layer, featurizer) of the current data and featurizer code, whether
    the store's features are fresh, stale (and why) or missing, and what a build would do.

    \b
    Exit status: 0 all fresh, 1 something stale or missing, 2 error (and where a
    build would stop, e.g. svd of a vector column or a '/' in a column's name:
    pick --layers). In CI:
      featstore status --dataset 1k || exit 1           # with the store at hand
      featstore status --lock featstore.lock             # without one: compare with the lockfile
    """
    from featstore import api
    from featstore.store import Store

    errors = {}  # without --dataset, one dataset's error (its data deleted) must not hide the others
    with ends_at_once():
        if lock_path:
            if featurizers or dtype:
                raise click.UsageError("--lock takes its featurizers from the lockfile; drop --featurizer and --dtype")
            reports = [api.status_against_lock(lock_path, dataset, layers=layers, progress=progress)]
        elif dataset:
            reports = [api.status(dataset, featurizers, layers=layers, store=store, dtype=dtype or "float32",
                                  progress=progress)]
        else:
            from featstore.sources import OBJECT_PREFIX

            reports, skipped = [], []
            opened = Store.open(store or default_store())
            for name in [c.dataset for c in opened.catalogs()]:
                if name.startswith(OBJECT_PREFIX):  # no name opens it: not an error of this status
                    click.echo(f"note: skipped {_short_dataset(name)}, a datasets.Dataset built from Python: check it "
                               "there (featstore.status(ds))", err=True)
                    skipped.append(name)
                    continue
                try:
                    reports.append(api.status(name, featurizers, layers=layers, store=store, dtype=dtype or "float32",
                                              progress=progress))
                except FeatstoreError as e:
                    errors[name] = str(e)
            if skipped and not reports and not errors:  # a CI gate must not pass on a store it could not check
                raise FeatstoreError(f"status checked no dataset: the store at {opened.location} catalogues only "
                                     "datasets.Dataset objects built from Python, which no name opens. Check them "
                                     "there: featstore.status(ds)")
            if not skipped and not reports and not errors and not as_json:
                click.echo(f"the store at {opened.location} catalogues no dataset: nothing to check")

    def update(r) -> str | None:  # the command that brings r's features up to date
        if r.fresh:
            return None
        return _relock_command(r, lock_path, layers) if lock_path else _build_command(r, featurizers, dtype, layers,
                                                                                      store)

    if as_json:
        click.echo(json.dumps([r.to_json() | {"update": update(r)} for r in reports]
                              + [{"dataset": name, "fresh": False, "error": error} for name, error in errors.items()],
                              indent=1))
    for r in reports if not as_json else []:
        _print_table([(s.state, s.split, s.layer, s.featurizer, s.reason)
                      for s in r.slots if show_all or s.state != "fresh"])
        counts, work = r.counts, r.work()
        columns = _count(work["columns"], "column")
        would = [f"compute {_count(work['entries'], 'entry')} from {columns} ({_size(work['input_bytes'])})"
                 ] if work["entries"] else []
        would += [f"reuse {_count(work['reused'], 'entry')} the store holds"] if work["reused"] else []
        would += [f"drop {_count(work['dropped'], 'feature')} of columns gone"] if work["dropped"] else []
        click.echo(f"{_short_dataset(r.dataset)}: {counts['fresh']} fresh, {counts['stale']} stale, "
                   f"{counts['missing']} missing" + (f"; a build would {' and '.join(would)}" if would else ""))
        if not r.fresh:
            sys.stdout.flush()  # the command goes to stderr: keep it after the summary when both reach a terminal
            click.echo(f"  to update: {update(r)}", err=True)
    for error in errors.values() if not as_json else ():
        click.echo(f"Error: {error}", err=True)
    sys.exit(2 if errors else 0 if all(r.fresh for r in reports) else 1)


def _build_command(report, featurizers: tuple[str, ...], dtype: str | None, layers: tuple[str, ...],
                   store: str | None) -> str:
    """The `featstore build` that does what `report` says a build would: the status's --featurizer
    specs as given (and --dtype), else the store's (none named where they are build's defaults),
    and its --import, --layers and --store."""
    import shlex

    from featstore.api import DEFAULT_FEATURIZERS

    ctx = click.get_current_context()
    stored = sorted({s.featurizer for s in report.slots} - {"labels"})
    named = featurizers or ([] if set(stored) == set(DEFAULT_FEATURIZERS) else stored)
    words = ["featstore", "build", "--dataset", report.dataset]
    words += [w for m in ctx.meta.get("featstore.imports", ()) for w in ("--import", m)]
    words += [w for spec in named for w in ("--featurizer", spec)]
    words += ["--dtype", dtype] if featurizers and dtype else []
    words += [w for g in layers for w in ("--layers", g)]
    given = ctx.get_parameter_source("store") == click.core.ParameterSource.COMMANDLINE  # not FEATSTORE_STORE's
    return shlex.join(words + (["--store", store] if given else []))


def _relock_command(report, lock_path: str, layers: tuple[str, ...]) -> str:
    """For a status against a lockfile: the build of what it locks, then the lock that writes it again."""
    import shlex
    from pathlib import Path

    from featstore.freshness import read_lock

    lock = read_lock(Path(lock_path).read_bytes(), lock_path)
    words = ["--dataset", report.dataset, *(w for m in lock.get("modules") or () for w in ("--import", m))]
    words += [w for spec in lock["featurizers"] for w in ("--featurizer", spec)]
    words += [w for g in layers or lock.get("layers") or () for w in ("--layers", g)]
    return f"{shlex.join(['featstore', 'build', *words])} && {shlex.join(['featstore', 'lock', *words, '-o', lock_path])}"


@main.command()
@click.option("--dataset", "-d", required=True, help=DATASET_HELP)
@click.option("--featurizer", "-f", "featurizers", multiple=True, metavar="SPEC",
              help="Featurizer spec, repeatable. [default: those the store holds for the dataset, else stats, svd]")
@click.option("--layers", "-l", multiple=True, metavar="GLOB", help="Layer columns, repeatable glob. [default: all]")
@_dtype_option
@_import_option
@click.option("--output", "-o", default="featstore.lock", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the lockfile ('-' for stdout).")
@_store_option
@click.option("--progress/--no-progress", default=True,
              help=PROGRESS_HELP + " It counts the columns hashed.")
def lock(dataset, featurizers, dtype, layers, output, store, progress):
    """Write a lockfile: per split and layer the input digest, per featurizer its identity, and the
    entry keys they give. Commit it; `featstore status --lock FILE` then names every entry a data
    or code change invalidates, on a machine without the store (a PR check)."""
    from featstore import api
    from featstore.freshness import lock_bytes

    with ends_at_once():
        data = lock_bytes(api.lock(dataset, featurizers, layers=layers, store=store, dtype=dtype or "float32",
                                   progress=progress))
    if output == "-":
        click.echo(data.decode(), nl=False)
        return
    from featstore.storage import LocalStorage

    LocalStorage(".").write_bytes(output, data)  # atomic: a reader never sees half a lockfile
    locked = json.loads(data)
    entries = sum(len(f) for layers_ in locked["entries"].values() for f in layers_.values())
    entries += len((locked.get("labels") or {}).get("entries", {}))  # each split's labels: as status counts them
    click.echo(f"wrote {output}: {_count(entries, 'entry')}", err=True)


@main.command()
@click.option("--sample", default=1.0, show_default=True, type=float, metavar="FRACTION",
              help="Check this fraction of the entries (chosen at random; at least one unless 0).")
@click.option("--recompute", default=0.0, show_default=True, type=float, metavar="FRACTION",
              help="Also recompute this fraction of the catalogued features from their datasets (CPU) and "
                   "compare within tolerance.")
@click.option("--repair", is_flag=True, help="Drop corrupt entries, so that the next build recomputes them.")
@click.option("--seed", type=int, default=None, help="Seed of the random samples.")
@_import_option
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--progress/--no-progress", default=True, help=PROGRESS_HELP)
def verify(sample, recompute, repair, seed, store, as_json, progress):
    """Check every entry's chunk files against the digests written when it was published (bit
    flips, truncation, missing or swapped files), and that every catalog reads. Exit status 1 if
    anything is wrong.

    \b
      featstore verify                                     # every chunk of every entry
      featstore verify --sample 0.1 --recompute 0.01       # a nightly spot check
      featstore verify --repair && featstore build -d 1k   # drop what is damaged, compute it again
    """
    from featstore import api

    with ends_at_once():  # --repair's removals are crash-safe (one rename each)
        report = api.verify(store, sample=sample, recompute=recompute, repair=repair, seed=seed, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        for key, problem in sorted(report.corrupt.items()):
            click.echo(f"corrupt  {key}  {problem}" + ("  (dropped)" if key in report.repaired else ""))
        for key, problem in sorted(report.mismatched.items()):
            click.echo(f"mismatch {key}  {problem}")
        for path, problem in sorted(report.damaged_catalogs.items()):
            click.echo(f"damaged  {path}  {problem}")
        skipped = sorted(report.skipped.items(), key=lambda item: item[1])
        for key, why in skipped[:SHOWN_SKIPPED]:
            click.echo(f"skipped  {key}  {why}")
        if len(skipped) > SHOWN_SKIPPED:
            click.echo(f"skipped  ... and {len(skipped) - SHOWN_SKIPPED} more (--json lists every one)")
        rate = _size(report.bytes_read / report.seconds) + "/s" if report.seconds else "at once"
        click.echo(f"checked {_count(report.checked, 'entry')} ({_size(report.bytes_read)}, {rate}), "
                   f"recomputed {report.recomputed}: {len(report.corrupt)} corrupt, {len(report.mismatched)} "
                   f"mismatched" + (f", {len(report.repaired)} dropped" if report.repaired else "")
                   + (f", {len(report.skipped)} skipped (stale or not loadable)" if report.skipped else "")
                   + (f", {_count(len(report.damaged_catalogs), 'damaged catalog')}" if report.damaged_catalogs else "")
                   + (f"; {_count(report.removed, 'catalogued entry')} removed by gc or verify --repair (featstore "
                      f"build computes {'it' if report.removed == 1 else 'them'} again)" if report.removed else ""))
    sys.exit(0 if report.ok else 1)


@main.command()
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--max-size", default=None, metavar="SIZE",
              help="After unreferenced entries, remove least recently used ones until entries fit in SIZE "
                   "(e.g. 500MB, 20GB).")
@click.option("--keep", "keep_days", default=0.0, type=click.FloatRange(min=0), metavar="DAYS", show_default=True,
              help="Never remove entries built or loaded in the last DAYS days.")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def gc(dry_run, max_size, keep_days, store, as_json):
    """Remove entries no catalog references, then (with --max-size) the least recently used ones,
    and the leftovers of crashed builds. Never removes what an open `featstore.open` view leases;
    waits for running builds.

    \b
      featstore gc --dry-run                               # what would go, and how much it frees
      featstore gc --max-size 20GB --keep 7                # fit 20 GB, sparing a week's entries
    """
    from featstore import api

    report = api.gc(store, dry_run=dry_run, max_size=_parse_size(max_size) if max_size else None,
                    keep_days=keep_days)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
        return
    verb = "would remove" if dry_run else "removed"
    for key, size, why in report.removed:
        click.echo(f"{verb} {key}  {_size(size)}  {why}")
    click.echo(f"{verb} {_count(len(report.removed), 'entry')}, freeing {_size(report.freed)} of {_size(report.size_before)}"
               f"; kept {report.held} leased by open readers; {_count(len(report.leftovers), 'leftover')} of crashed "
               f"builds, {_count(len(report.stale_leases), 'stale lease')}")


@main.command()
@click.option("--dataset", "-d", required=True, help="The dataset (as given to build) whose features to forget.")
@click.option("--split", "splits", multiple=True, help="Only this split, repeatable. [default: all]")
@click.option("--layers", "-l", multiple=True, metavar="GLOB", help="Only layers matching GLOB, repeatable. [default: all]")
@click.option("--featurizer", "-f", "featurizers", multiple=True, metavar="NAME",
              help="Only this featurizer (a name, every spec of it; or a spec), repeatable. [default: all]")
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be forgotten; change nothing.")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def forget(dataset, splits, layers, featurizers, dry_run, store, as_json):
    """Drop a dataset's features from the store's catalog (all, or some splits, layers,
    featurizers): `ls`, `open` and `status` no longer list them, and the next `gc` removes the
    entries no other dataset uses. Until that gc, building the same data re-catalogues them
    without computing.

    \b
      featstore forget --dataset ./adapters_v1 && featstore gc      # a dataset you deleted
      featstore forget --dataset 1k --featurizer randproj          # an experiment you dropped
    """
    from featstore import api

    report = api.forget(dataset, store, splits=splits, layers=layers, featurizers=featurizers, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
        return
    verb = "would forget" if dry_run else "forgot"
    whole = " (its whole catalog)" if report.catalog_removed else ""
    freed = sum(report.unreferenced.values())
    them = "it" if len(report.unreferenced) == 1 else "them"
    then = (f"{_count(len(report.unreferenced), 'entry')} ({_size(freed)}) "
            + ("would be unreferenced" if dry_run else f"unreferenced now: `featstore gc` removes {them}")
            if report.unreferenced else "no entry unreferenced (other catalogued features use them)")
    click.echo(f"{verb} {_count(len(report.rows), 'feature')} of {_short_dataset(report.dataset)}{whole}; {then}")


@main.command(name="featurizers")
@click.argument("specs", nargs=-1, metavar="[SPEC]...")
@_import_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: name, params, version, code, per_row, doc.")
def featurizers_cmd(specs, as_json):
    """List the featurizers: built-ins, entry-point plugins, with parameters and docs; or only
    SPECs, where module.path:function loads your own (installed, or a file in the current
    directory) and shows the version its code hashes to and what it hashes: the function, the
    helpers it calls and the constants it reads.

    \b
    Spec syntax: NAME[:key=value,...] or module.path:function[:key=value,...]; every spec also
    takes dtype=float32|float16|bfloat16. Add your own with @featstore.featurizer("name").
      featstore featurizers feats:mine        # is it found, what does it take, what is its version
      featstore featurizers --import feats    # every featurizer, those feats registers by name too
    """
    from featstore.featurizers import BoundFeaturizer, available, parse_spec

    # with SPECs, each as given, its parameters as set (`svd:k=3` shows k=3); else every featurizer
    bound = [parse_spec(spec) for spec in specs] or [BoundFeaturizer(f, dict(f.params)) for f in available().values()]
    versions = {b.name: b.featurizer.versioned() for b in bound}
    if as_json:
        click.echo(json.dumps([{"name": b.name, "spec": b.spec, "params": b.params, "dtype": b.dtype,
                                "version": versions[b.name][0], "code": versions[b.name][1],
                                "per_row": b.featurizer.per_row, "doc": b.featurizer.doc} for b in bound], indent=1))
        return
    for b in bound:
        params = ", ".join(f"{k}={v}" for k, v in b.params.items()) or "no parameters"
        stored = f"; stored as {b.dtype}" if b.dtype != "float32" else ""
        version, code = versions[b.name]
        click.echo(f"{b.spec}  ({params}{stored}; version {version})")
        for line in b.featurizer.doc.splitlines():
            click.echo(f"    {line}")
        if code and specs:  # what its identity follows: a helper missing here is not tracked
            click.echo(f"    version hashed from: {', '.join(path.partition(':')[2] or path for path in code)}")


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


def _print_table(rows: list[tuple[str, ...]]) -> None:
    """Print rows as left-aligned columns, each as wide as its widest cell."""
    widths = [max(map(len, column)) for column in zip(*rows)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _count(n: int, noun: str) -> str:
    """'1 entry', '2 entries', '1 column', '3 columns'."""
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
             "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}
    number = text.strip().upper().rstrip("BKMGTI") or "x"
    unit = text.strip().upper()[len(number):]
    try:
        size = float(number) * units[unit]
        if not 0 <= size < float("inf"):  # '-1GB' would have removed every entry
            raise ValueError(size)
        return int(size)
    except (ValueError, KeyError):
        raise click.BadParameter(f"{text!r} is not a size; write e.g. 500MB, 20GB, 1.5TiB (0 removes every "
                                 "entry not leased or kept)", param_hint="--max-size") from None


def _short_dataset(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


if __name__ == "__main__":
    main()
