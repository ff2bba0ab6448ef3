"""`featstore status` and `featstore lock`: what is fresh, stale (and why) or missing, against the
store or a lockfile; the command that brings it up to date."""

from __future__ import annotations

import json
import sys

import click

from featstore.cli.common import (
    DATASET_HELP,
    PROGRESS_HELP,
    counted,
    dtype_option,
    human_size,
    import_option,
    print_table,
    short_name,
    store_option,
)
from featstore.config import default_store
from featstore.errors import FeatstoreError
from featstore.interrupts import ends_at_once


@click.command()
@click.option("--dataset", "-d", default=None, help=DATASET_HELP + " [default: every dataset the store holds]")
@click.option("--featurizer", "-f", "featurizers", multiple=True, metavar="SPEC",
              help="Featurizer spec, repeatable. [default: those the store holds for the dataset]")
@click.option("--layers", "-l", multiple=True, metavar="GLOB", help="Layer columns, repeatable glob. [default: all]")
@dtype_option
@import_option
@click.option("--lock", "lock_path", default=None, type=click.Path(dir_okay=False),
              help="Compare with this lockfile (see `featstore lock`) instead of a store: no store needed.")
@store_option
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
                    click.echo(f"note: skipped {short_name(name)}, a datasets.Dataset built from Python: check it "
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
        print_table([(s.state, s.split, s.layer, s.featurizer, s.reason)
                      for s in r.slots if show_all or s.state != "fresh"])
        counts, work = r.counts, r.work()
        columns = counted(work["columns"], "column")
        would = [f"compute {counted(work['entries'], 'entry')} from {columns} ({human_size(work['input_bytes'])})"
                 ] if work["entries"] else []
        would += [f"reuse {counted(work['reused'], 'entry')} the store holds"] if work["reused"] else []
        would += [f"drop {counted(work['dropped'], 'feature')} of columns gone"] if work["dropped"] else []
        click.echo(f"{short_name(r.dataset)}: {counts['fresh']} fresh, {counts['stale']} stale, "
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


@click.command()
@click.option("--dataset", "-d", required=True, help=DATASET_HELP)
@click.option("--featurizer", "-f", "featurizers", multiple=True, metavar="SPEC",
              help="Featurizer spec, repeatable. [default: those the store holds for the dataset, else stats, svd]")
@click.option("--layers", "-l", multiple=True, metavar="GLOB", help="Layer columns, repeatable glob. [default: all]")
@dtype_option
@import_option
@click.option("--output", "-o", default="featstore.lock", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the lockfile ('-' for stdout).")
@store_option
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
    click.echo(f"wrote {output}: {counted(entries, 'entry')}", err=True)
