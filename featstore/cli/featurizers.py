"""`featstore featurizers`: the featurizers featstore knows, their parameters, versions and docs."""

from __future__ import annotations

import json

import click

from featstore.cli.common import import_option


@click.command(name="featurizers")
@click.argument("specs", nargs=-1, metavar="[SPEC]...")
@import_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: name, params, version, code, per_row, doc.")
def featurizers(specs, as_json):
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
