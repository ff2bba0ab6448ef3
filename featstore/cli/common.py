"""What the commands share: the error-to-exit-code group, common options and their help, and the
formatting of sizes, counts and tables."""

from __future__ import annotations

import os
import sys

import click

from featstore import config
from featstore.errors import FeatstoreError

DTYPES = ["float32", "float16", "bfloat16"]
STORE_HELP = ("Store: a directory or an fsspec URL (s3://bucket/prefix, memory://...). "
              "[env: FEATSTORE_STORE; default: $FEATSTORE_HOME/store, ~/.cache/featstore/store]")
PROGRESS_HELP = ("Show progress on stderr: a bar on a terminal; elsewhere (a job's log) a line at most every "
                 "FEATSTORE_PROGRESS_SECONDS (30) seconds.")


class Group(click.Group):
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


def store_option(f):
    return click.option("--store", envvar="FEATSTORE_STORE", default=None, help=STORE_HELP)(f)


def dtype_option(f):  # status and lock: what build's --dtype was
    return click.option("--dtype", type=click.Choice(DTYPES), default=None,
                        help="Stored dtype of the --featurizer specs that set none, as given to `featstore build`. "
                             "[default: float32]")(f)


def _import_featurizers(ctx, param, modules: tuple[str, ...]) -> None:
    from featstore.featurizers import import_modules

    import_modules(modules, "install it, or run featstore from the directory that holds it")
    ctx.meta["featstore.imports"] = modules  # for the build command status suggests


def import_option(f):
    return click.option("--import", "modules", multiple=True, metavar="MODULE", expose_value=False,
                        callback=_import_featurizers,
                        help="Import this module first, repeatable: one that registers featurizers of yours with "
                             "@featstore.featurizer, so that the store's features of them are found by their "
                             "names (`--import myfeats` for ./myfeats.py).")(f)


DATASET_HELP = ("Preset name (sanity, 1k, 10k), save_to_disk directory, directory or glob of parquet/arrow "
                "files, or a Hugging Face Hub id.")


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Print rows as left-aligned columns, each as wide as its widest cell."""
    widths = [max(map(len, column)) for column in zip(*rows)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def counted(n: int, noun: str) -> str:
    """'1 entry', '2 entries', '1 column', '3 columns'."""
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def parse_size(text: str) -> int:
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


def short_name(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3):]
