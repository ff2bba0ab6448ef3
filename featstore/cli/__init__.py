"""`featstore` commands: parse options, call the API, print. No logic worth testing lives here.

Errors print as one line on stderr and exit 2 (1 is reserved for "ran fine, answer is no", e.g.
`status` finding stale entries); `--debug` shows the traceback instead. One module per group of
commands; `common` holds what they share.
"""

from __future__ import annotations

import click

from featstore.cli import build, datasets, featurizers, maintenance, status
from featstore.cli.common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
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


for command in (build.build, build.ls, status.status, status.lock, maintenance.verify, maintenance.gc,
                maintenance.forget, featurizers.featurizers, datasets.datasets):
    main.add_command(command)
