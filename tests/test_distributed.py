"""A build spread over a real Dask LocalCluster (worker processes) equals a single-process build."""

import json

import pytest

import featstore
from featstore.store import Store

pytest.importorskip("dask.distributed")


def test_workers_build_the_same_entries_and_catalog(sanity_dir, tmp_path):
    local, spread = str(tmp_path / "local"), str(tmp_path / "spread")
    specs = ["stats", "svd:k=4"]
    expected = featstore.build("sanity", specs, store=local, device="cpu")
    report = featstore.build("sanity", specs, store=spread, device="cpu", workers=2)
    assert report.computed == expected.computed == 32
    assert len(report.worker_peak_rss) == 2 and all(rss > 10 << 20 for rss in report.worker_peak_rss.values())
    assert sorted((e.split, e.layer, e.featurizer, e.key) for e in report.entries) == sorted(
        (e.split, e.layer, e.featurizer, e.key) for e in expected.entries)
    a, b = featstore.open("sanity", store=local), featstore.open("sanity", store=spread)
    assert [(r.slot, r.key) for r in a.catalog.rows] == [(r.slot, r.key) for r in b.catalog.rows]
    assert a.catalog.splits == b.catalog.splits  # labels committed by the client
    for row in b.catalog.rows:
        assert (b.load(row.layer, row.featurizer, row.split) == a.load(row.layer, row.featurizer, row.split)).all()
    assert featstore.verify(spread).ok and featstore.status("sanity", store=spread).fresh
    again = featstore.build("sanity", specs, store=spread, device="cpu", workers=1)
    assert again.computed == 0 and again.reused == 32
    assert sorted(Store.open(spread).entry_keys()) == sorted(Store.open(local).entry_keys())


def test_workers_import_the_module_of_a_decorated_featurizer(sanity_dir, tmp_path, monkeypatch):
    """A decorated featurizer is known by its own name only where its module was imported: the
    workers import it too (here from the current directory, as the featstore command would)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labdeco.py").write_text(
        "import featstore\n\n@featstore.featurizer('test_deco_colmax')\n"
        "def colmax(x, top: int = 2):\n    return x.amax(1).topk(top, dim=1).values\n")
    local, spread = str(tmp_path / "local"), str(tmp_path / "spread")
    expected = featstore.build("sanity", ["labdeco:colmax:top=3"], store=local, device="cpu")
    report = featstore.build("sanity", ["labdeco:colmax:top=3"], store=spread, device="cpu", workers=2)
    assert {e.featurizer for e in report.entries} == {"test_deco_colmax:top=3"}
    assert sorted(e.key for e in report.entries) == sorted(e.key for e in expected.entries)
    assert report.computed == 16 and report.seconds["total"] >= report.seconds["plan"] > 0


def test_a_worker_that_cannot_import_a_featurizer_module_says_so(sanity_dir, tmp_path, monkeypatch):
    from featstore.errors import SpecError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "onlyclient.py").write_text(  # importable here, not in a worker process
        "import multiprocessing\nimport featstore\n\nif multiprocessing.parent_process() is not None:\n"
        "    raise ImportError('not installed on this worker')\n\n"
        "@featstore.featurizer('test_onlyclient', version='1')\ndef f(x):\n    return x.mean(1)\n")
    expected = r"cannot import 'onlyclient', which defines featurizers \(not installed on this worker\); install it where"
    with pytest.raises(SpecError, match=expected):
        featstore.build("sanity", ["onlyclient:f"], store=str(tmp_path / "s"), device="cpu", workers=1)
    assert Store.open(str(tmp_path / "s")).read_catalog("sanity") is None


def test_a_featurizer_that_differs_on_the_workers_is_refused(sanity_dir, tmp_path, monkeypatch):
    """The client's script set a constant at run time; the workers import the module afresh and
    would compute with the value in its file, under the client's identity: refused, nothing
    catalogued."""
    from featstore.errors import FeatstoreError

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "labscale.py").write_text("import featstore\n\nSCALE = 1.0\n\n\n@featstore.featurizer('test_labscale')\n"
                                          "def scaled(x):\n    return x.mean(1) * SCALE\n")
    import labscale

    monkeypatch.setattr(labscale, "SCALE", 2.0)
    with pytest.raises(FeatstoreError, match="test_labscale differs on a Dask worker from the client"):
        featstore.build("sanity", ["test_labscale"], store=str(tmp_path / "s"), device="cpu", workers=1)
    assert Store.open(str(tmp_path / "s")).read_catalog("sanity") is None
    monkeypatch.setattr(labscale, "SCALE", 1.0)  # as in the file: the workers agree
    assert featstore.build("sanity", ["test_labscale"], store=str(tmp_path / "s"), device="cpu", workers=1).computed == 16


def test_a_script_that_defines_its_featurizer_builds_on_workers(sanity_dir, tmp_path):
    """`python train.py` defining a featurizer and building with workers: they import the
    script's file as its module (`train`) and compute the same entries as a local build."""
    import json
    import subprocess
    import sys

    (tmp_path / "train.py").write_text(
        "import json, sys\nimport featstore\n\n\n@featstore.featurizer('test_script_rowmax')\n"
        "def rowmax(x):\n    return x.amax(2)\n\n\nif __name__ == '__main__':\n"
        "    r = featstore.build('sanity', ['test_script_rowmax'], store=sys.argv[1], device='cpu', "
        "workers=int(sys.argv[2]))\n    print(json.dumps(sorted(e.key for e in r.entries if e.status == 'computed')))\n")
    keys = [json.loads(subprocess.run([sys.executable, "train.py", str(tmp_path / f"s{n}"), str(n)], cwd=tmp_path,
                                      check=True, capture_output=True, text=True).stdout) for n in (0, 1)]
    assert len(keys[0]) == 16 and keys[1] == keys[0]


def test_a_featurizer_defined_in_main_is_refused_before_workers_start(sanity_dir, tmp_path):
    from featstore.errors import FeatstoreError

    def doubled(x):
        return 2 * x.mean(1)

    doubled.__module__ = "__main__"  # as if defined in the script that runs the build
    featstore.featurizer("test_in_main", version="1")(doubled)
    with pytest.raises(FeatstoreError, match=r"featurizer test_in_main is defined in __main__ where no module name "
                                             r"reaches it .*move it into a module"):
        featstore.build("sanity", ["test_in_main"], store=str(tmp_path / "s"), device="cpu", workers=2)
    assert not (tmp_path / "s").exists()


def test_peak_rss_is_the_process_own_not_its_parents():
    """getrusage's ru_maxrss survives fork + exec, so a worker started by a big client would
    report the client's peak; _peak_rss must not."""
    import subprocess
    import sys

    code = ("import numpy, subprocess, sys; big = numpy.ones(400 << 17); "  # 400 MB, touched
            "print(subprocess.run([sys.executable, '-c', 'from featstore.distributed import _peak_rss; "
            "print(_peak_rss())'], capture_output=True, text=True, check=True).stdout)")
    child_peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 10 << 20 < child_peak < 200 << 20


def test_one_worker_per_device_equals_one_process(sanity_dir, tmp_path):
    """The multi-GPU path (`--devices`), run with two CPU "devices": same entries, same bits."""
    local, spread = str(tmp_path / "local"), str(tmp_path / "spread")
    expected = featstore.build("sanity", ["svd:k=4"], store=local, device="cpu")
    report = featstore.build("sanity", ["svd:k=4"], store=spread, devices=["cpu", "cpu"])
    assert sorted(report.worker_devices.values()) == ["cpu", "cpu"] and report.device == "cpu"
    assert sorted((e.layer, e.split, e.key) for e in report.entries) == sorted(
        (e.layer, e.split, e.key) for e in expected.entries)
    a, b = featstore.open("sanity", store=local), featstore.open("sanity", store=spread)
    for row in a.catalog.rows:
        assert b.row(row.layer, row.featurizer, row.split).key == row.key
        assert (b.load(row.layer, row.featurizer, row.split) == a.load(row.layer, row.featurizer, row.split)).all()


def test_a_failing_device_worker_publishes_nothing_partial_and_keeps_what_finished(tmp_path):
    from conftest import saved_layers_dataset

    from featstore.errors import FeaturizerError

    saved_layers_dataset(tmp_path / "bad", layers=4, rows=64, dim=8, inf_at=(3, 7))
    store = str(tmp_path / "store")
    with pytest.raises(FeaturizerError, match=r"stats on column 'layer_003'.*row 7"):
        featstore.build(str(tmp_path / "bad"), ["stats"], store=store, devices=["cpu", "cpu"])
    st = Store.open(store)
    assert featstore.verify(store).ok  # what the other worker published is whole
    assert len(st.entry_keys()) <= 3
    # One task per layer, started in order on two workers: the failing layer's worker had
    # finished another before it. What finished is catalogued, so gc keeps it.
    catalogued = {r.layer: r.key for r in st.read_catalog(str(tmp_path / "bad")).rows}
    assert catalogued and set(catalogued) <= {"layer_000", "layer_001", "layer_002"}
    featstore.gc(store)
    assert set(catalogued.values()) <= set(st.entry_keys())


def test_devices_are_checked_before_anything_starts(sanity_dir, tmp_path):
    from featstore.errors import FeatstoreError

    with pytest.raises(FeatstoreError, match="not both"):
        featstore.build("sanity", ["stats"], store=str(tmp_path / "s"), devices=["cpu", "cpu"], workers=2)
    with pytest.raises(FeatstoreError, match="device 'nonsense' is not usable here: a build runs on auto, cpu, cuda or cuda:N"):
        featstore.build("sanity", ["stats"], store=str(tmp_path / "s"), devices=["cpu", "nonsense"])
    assert not (tmp_path / "s").exists()


def test_cli_devices_flag(sanity_dir, tmp_path):
    import json
    import os
    import subprocess
    import sys

    store = str(tmp_path / "store")
    run = subprocess.run([sys.executable, "-m", "featstore.cli", "build", "--dataset", "sanity", "-f", "stats",
                          "-l", "layer_00[01]", "--devices", "cpu,cpu", "--store", store, "--json", "--no-progress"],
                         capture_output=True, text=True, check=False, env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["computed"] == 4 and report["device"] == "cpu"
    assert featstore.status("sanity", ["stats"], layers=["layer_00[01]"], store=store).fresh


def test_a_dask_build_shows_its_progress_on_a_terminal(sanity_dir, tmp_path):
    """A bar of the columns the finished tasks built, as a local build's (it was Dask's own bar,
    which blocked the build's Ctrl-C until every task ended)."""
    from test_cli import _on_a_terminal

    status, out, shown = _on_a_terminal("build", "-d", "sanity", "-f", "stats", "--workers", "2",
                                        "--store", str(tmp_path / "store"), "--json")
    assert status == 0 and json.loads(out)["computed"] == 16
    assert "build sanity:" in shown and "/16 " in shown
