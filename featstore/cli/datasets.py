"""`featstore datasets ls|make`: the built-in synthetic datasets (presets)."""

from __future__ import annotations

import json

import click

from featstore.cli.common import human_size


@click.group()
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
        click.echo(f"{p.name:7} {p.description:42} {human_size(p.nbytes):>9}  {state}: {d['path']}")


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
