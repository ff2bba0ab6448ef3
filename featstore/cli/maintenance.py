"""`featstore verify`, `gc` and `forget`: the store's health, and freeing what nothing needs."""

from __future__ import annotations

import json
import sys

import click

from featstore.cli.common import (
    PROGRESS_HELP,
    counted,
    human_size,
    import_option,
    parse_size,
    short_name,
    store_option,
)
from featstore.interrupts import ends_at_once

SHOWN_SKIPPED = 10  # features `verify --recompute` could not recompute, listed by name (--json: all)


@click.command()
@click.option("--sample", default=1.0, show_default=True, type=float, metavar="FRACTION",
              help="Check this fraction of the entries (chosen at random; at least one unless 0).")
@click.option("--recompute", default=0.0, show_default=True, type=float, metavar="FRACTION",
              help="Also recompute this fraction of the catalogued features from their datasets (CPU) and "
                   "compare within tolerance.")
@click.option("--repair", is_flag=True, help="Drop corrupt entries, so that the next build recomputes them.")
@click.option("--seed", type=int, default=None, help="Seed of the random samples.")
@import_option
@store_option
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
        rate = human_size(report.bytes_read / report.seconds) + "/s" if report.seconds else "at once"
        click.echo(f"checked {counted(report.checked, 'entry')} ({human_size(report.bytes_read)}, {rate}), "
                   f"recomputed {report.recomputed}: {len(report.corrupt)} corrupt, {len(report.mismatched)} "
                   f"mismatched" + (f", {len(report.repaired)} dropped" if report.repaired else "")
                   + (f", {len(report.skipped)} skipped (stale or not loadable)" if report.skipped else "")
                   + (f", {counted(len(report.damaged_catalogs), 'damaged catalog')}" if report.damaged_catalogs else "")
                   + (f"; {counted(report.removed, 'catalogued entry')} removed by gc or verify --repair (featstore "
                      f"build computes {'it' if report.removed == 1 else 'them'} again)" if report.removed else ""))
    sys.exit(0 if report.ok else 1)


@click.command()
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--max-size", default=None, metavar="SIZE",
              help="After unreferenced entries, remove least recently used ones until entries fit in SIZE "
                   "(e.g. 500MB, 20GB).")
@click.option("--keep", "keep_days", default=0.0, type=click.FloatRange(min=0), metavar="DAYS", show_default=True,
              help="Never remove entries built or loaded in the last DAYS days.")
@store_option
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

    report = api.gc(store, dry_run=dry_run, max_size=parse_size(max_size) if max_size else None,
                    keep_days=keep_days)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
        return
    verb = "would remove" if dry_run else "removed"
    for key, size, why in report.removed:
        click.echo(f"{verb} {key}  {human_size(size)}  {why}")
    click.echo(f"{verb} {counted(len(report.removed), 'entry')}, freeing {human_size(report.freed)} of {human_size(report.size_before)}"
               f"; kept {report.held} leased by open readers; {counted(len(report.leftovers), 'leftover')} of crashed "
               f"builds, {counted(len(report.stale_leases), 'stale lease')}")


@click.command()
@click.option("--dataset", "-d", required=True, help="The dataset (as given to build) whose features to forget.")
@click.option("--split", "splits", multiple=True, help="Only this split, repeatable. [default: all]")
@click.option("--layers", "-l", multiple=True, metavar="GLOB", help="Only layers matching GLOB, repeatable. [default: all]")
@click.option("--featurizer", "-f", "featurizers", multiple=True, metavar="NAME",
              help="Only this featurizer (a name, every spec of it; or a spec), repeatable. [default: all]")
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be forgotten; change nothing.")
@store_option
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
    then = (f"{counted(len(report.unreferenced), 'entry')} ({human_size(freed)}) "
            + ("would be unreferenced" if dry_run else f"unreferenced now: `featstore gc` removes {them}")
            if report.unreferenced else "no entry unreferenced (other catalogued features use them)")
    click.echo(f"{verb} {counted(len(report.rows), 'feature')} of {short_name(report.dataset)}{whole}; {then}")
