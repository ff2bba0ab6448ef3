import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import datasets
import numpy as np
import pytest
from click.testing import CliRunner

import featstore
from featstore.cli import main
from featstore.device import resolve
from featstore.store import Store


@pytest.fixture
def run(store_dir):
    def invoke(*args, ok=True):
        result = CliRunner().invoke(main, [*args], env={"FEATSTORE_STORE": store_dir}, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result
    return invoke


def test_build_then_ls(run, sanity_dir, store_dir):
    out = run("build", "--dataset", "sanity", "--featurizer", "raw", "--featurizer", "svd:k=4",
              "--layers", "layer_00[01]", "--no-progress").output
    assert "8 computed (8 new), 0 reused" in out and "written" in out
    assert "\n  labels   of splits test, train: new or changed\n" in out
    assert "labels" not in run("build", "-d", "sanity", "-f", "raw", "--layers", "layer_00[01]", "--no-progress").output
    assert re.search(r"seconds  [\d.]+ in all; per phase, summed over threads: plan [\d.]+  hash [\d.]+  "
                     r"read [\d.]+  compute [\d.]+  write [\d.]+$", out, re.MULTILINE)
    table = run("ls", "--dataset", "sanity", "--featurizer", "svd").output.splitlines()
    assert table[0].split() == ["dataset", "split", "layer", "featurizer", "shape", "dtype", "size", "key", "created"]
    assert [line.split()[:6] for line in table[1:-1]] == [
        ["sanity", "test", "layer_000", "svd:k=4", "64x4", "float32"],
        ["sanity", "test", "layer_001", "svd:k=4", "64x4", "float32"],
        ["sanity", "train", "layer_000", "svd:k=4", "256x4", "float32"],
        ["sanity", "train", "layer_001", "svd:k=4", "256x4", "float32"],
    ]
    assert table[-1] == "4 entries, 10.2 KB"  # (64 + 64 + 256 + 256) rows x 4 values x 4 bytes
    with featstore.open("sanity", store=store_dir) as fs:
        evicted = fs.row("layer_001", "svd:k=4", "train").key
    Store.open(store_dir).delete_entry(evicted)  # as gc --max-size does
    table = run("ls", "--dataset", "sanity", "--featurizer", "svd").output.splitlines()
    assert table[4].split()[6:8] == ["removed", evicted[:12]]
    assert table[-1] == "3 entries, 6.1 KB; 1 entry removed by gc or verify --repair (featstore build computes it again)"
    summary = run("ls", "--summary").output.splitlines()
    assert summary[0].split() == ["dataset", "featurizer", "splits", "layers", "entries", "size", "removed", "last",
                                  "built"]
    assert [line.split()[:8] for line in summary[1:-1]] == [
        ["sanity", "labels", "test,train", "1", "2", "2.6", "KB", "0"],  # 320 int64 labels
        ["sanity", "raw", "test,train", "2", "4", "655.4", "KB", "0"],  # 640 rows x 16x16 x 4 bytes
        ["sanity", "svd:k=4", "test,train", "2", "4", "6.1", "KB", "1"],
    ]
    assert summary[-1] == "9 entries, 664.1 KB; 1 entry removed by gc or verify --repair (featstore build computes it again)"
    (svd,) = json.loads(run("ls", "--summary", "--json", "--featurizer", "svd").output)
    assert svd == {"dataset": "sanity", "featurizer": "svd:k=4", "splits": ["test", "train"], "layers": 2, "entries": 4,
                   "nbytes": 6144, "removed": 1, "created": svd["created"]} and svd["created"].endswith("+00:00")


def test_ls_lists_each_splits_labels_as_the_entries_status_and_verify_count(run, sanity_dir, store_dir):
    run("build", "-d", "sanity", "-f", "stats", "--layers", "layer_000", "--no-progress")
    table = run("ls", "--dataset", "sanity").output.splitlines()
    assert [line.split()[:7] for line in table[1:-1]] == [
        ["sanity", "test", "category_label", "labels", "64", "int64", "512"],
        ["sanity", "test", "layer_000", "stats", "64x4", "float32", "1.0"],
        ["sanity", "train", "category_label", "labels", "256", "int64", "2.0"],
        ["sanity", "train", "layer_000", "stats", "256x4", "float32", "4.1"],
    ]
    assert table[-1] == "4 entries, 7.7 KB"
    assert "sanity: 4 fresh, 0 stale, 0 missing" in run("status", "-d", "sanity", "--layers", "layer_000",
                                                        "--no-progress").output
    assert run("verify").output.startswith("checked 4 entries (7.7 KB")
    (test_labels, train_labels) = json.loads(run("ls", "--json", "--featurizer", "labels").output)
    with featstore.open("sanity", store=store_dir) as fs:
        assert fs.labels("train").tolist() == Store.open(store_dir).read_entry(train_labels["key"]).tolist()
    assert train_labels | {"key": "", "created": ""} == {
        "dataset": "sanity", "split": "train", "layer": "category_label", "featurizer": "labels", "shape": [256],
        "dtype": "int64", "nbytes": 2048, "key": "", "created": "", "stored": True}
    assert train_labels["created"].endswith("+00:00")
    Store.open(store_dir).delete_entry(test_labels["key"])
    table = run("ls", "--featurizer", "labels").output.splitlines()
    assert table[1].split()[6:8] == ["removed", test_labels["key"][:12]]
    assert table[-1].startswith("1 entry, 2.0 KB; 1 entry removed")
    checked = run("verify").output  # not a fault, but said, as ls says it
    assert checked.startswith("checked 3 entries") and checked.endswith(
        ": 0 corrupt, 0 mismatched; 1 catalogued entry removed by gc or verify --repair (featstore build computes "
        "it again)\n"), checked
    with featstore.open("sanity", store=store_dir) as fs:
        Store.open(store_dir).delete_entry(fs.row("layer_000", "stats", "train").key)
    recomputed = run("verify", "--recompute", "1").output  # what was removed has nothing to compare with
    assert "recomputed 1: 0 corrupt, 0 mismatched; 2 catalogued entries removed" in recomputed, recomputed


def test_build_json_and_ls_json(run, sanity_dir):
    first = json.loads(run("build", "-d", "sanity", "-f", "stats", "--json", "--no-progress").output)
    assert (first["computed"], first["reused"], first["device"]) == (16, 0, resolve("auto"))
    assert set(first["seconds"]) == {"plan", "hash", "read", "compute", "write", "total"}
    second = json.loads(run("build", "-d", "sanity", "-f", "stats", "--json", "--no-progress").output)
    assert (second["computed"], second["reused"], second["bytes_written"], second["device"]) == (0, 16, 0, None)
    rows = json.loads(run("ls", "--json", "--layer", "layer_007", "--split", "test").output)
    assert rows == [{"dataset": "sanity", "split": "test", "layer": "layer_007", "featurizer": "stats",
                     "shape": [64, 4], "dtype": "float32", "nbytes": 1024, "key": rows[0]["key"],
                     "created": rows[0]["created"], "stored": True}]
    assert rows[0]["key"] == next(e["key"] for e in first["entries"] if e["layer"] == "layer_007" and e["split"] == "test")


def test_errors_are_one_line_and_exit_2(run, tmp_path):
    result = run("build", "-d", "sanity", "-f", "svd:k=x", ok=False)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["Error: in featurizer spec 'svd:k=x': k takes an int, not 'x'"]
    result = run("ls", ok=False)
    assert result.exit_code == 2 and "no featstore at" in result.output and "Traceback" not in result.output


def test_a_device_typo_fails_even_when_nothing_is_to_compute(run, sanity_dir):
    run("build", "-d", "sanity", "-f", "stats", "--no-progress")
    for typo in ("tpu", "cuda:x", "gpu", "CPU"):
        result = run("build", "-d", "sanity", "-f", "stats", "--device", typo, ok=False)
        assert result.exit_code == 2, typo
        assert result.output.strip() == f"Error: device {typo!r} is not usable here: a build runs on auto, cpu, cuda or cuda:N"


def test_datasets_make_and_ls(run, tmp_path, featstore_home):
    out = run("datasets", "make", "sanity", "--out", str(tmp_path / "mine")).output
    assert "saved to" in out and (tmp_path / "mine" / "dataset_dict.json").exists()
    listing = json.loads(run("datasets", "ls", "--json").output)
    assert [d["name"] for d in listing] == ["sanity", "1k", "10k"]
    assert listing[1]["rows"] == 1000 and listing[1]["layers"] == 128 and listing[1]["signal_layers"][0] == 32
    assert run("datasets", "make", "huge", ok=False).exit_code == 2


def test_help_teaches(run):
    out = run("build", "--help").output
    for word in ("--dataset", "--featurizer", "svd:k=32", "--layers", "--label-column", "FEATSTORE_STORE"):
        assert word in out


def _featstore(*args, env):
    return subprocess.run([sys.executable, "-m", "featstore.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def test_a_build_logging_to_a_file_prints_progress_lines_not_a_bar(sanity_dir, store_dir, featstore_home, tmp_path):
    env = dict(os.environ, FEATSTORE_STORE=store_dir, FEATSTORE_HOME=str(featstore_home), FEATSTORE_PROGRESS_SECONDS="0")
    log = tmp_path / "job.log"
    with log.open("w") as stderr:  # as a batch job's log: not a terminal
        built = subprocess.run([sys.executable, "-m", "featstore.cli", "build", "-d", "sanity", "-f", "stats"],
                               stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, timeout=300, check=False)
    assert built.returncode == 0 and "16 computed" in built.stdout
    lines = [line for line in log.read_text().splitlines() if line.startswith("build ")]  # not a library's warning
    assert "\r" not in log.read_text() and len(lines) == 16, lines
    for done, line in enumerate(lines, 1):
        assert re.fullmatch(rf"build sanity: {done}/16 columns \(\d+%\) in \d+ s(, about \d+ s left)?; "
                            rf"computed={done}, reused=0", line), line
    assert lines[-1].startswith("build sanity: 16/16 columns (100%) in ") and "left" not in lines[-1]
    quiet = subprocess.run([sys.executable, "-m", "featstore.cli", "build", "-d", "sanity", "-f", "raw",
                            "--no-progress"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert quiet.returncode == 0 and quiet.stderr == ""
    checked = subprocess.run([sys.executable, "-m", "featstore.cli", "verify", "--recompute", "0.25"],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
    assert checked.returncode == 0 and "checked 34 entries" in checked.stdout, checked.stderr
    lines = [line for line in checked.stderr.splitlines() if line.startswith(("verify: ", "recompute: "))]
    assert len(lines) == 34 + 8 and lines[33].startswith("verify: 34/34 entries (100%) in "), lines
    assert lines[-1].startswith("recompute: 8/8 features (100%) in ")
    shutil.rmtree(Path(store_dir) / "digests")  # the digest cache: status hashes the columns again
    hashed = subprocess.run([sys.executable, "-m", "featstore.cli", "status", "-d", "sanity"],
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    assert hashed.returncode == 0 and "sanity: 34 fresh" in hashed.stdout, hashed.stderr
    hashing = [line for line in hashed.stderr.splitlines() if line.startswith("hash ")]
    assert len(hashing) == 16 and hashing[-1].startswith("hash sanity: 16/16 columns (100%) in "), hashed.stderr
    made = subprocess.run([sys.executable, "-m", "featstore.cli", "datasets", "make", "sanity", "--out",
                           str(tmp_path / "gen")], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert made.returncode == 0 and "\r" not in made.stderr, made.stderr  # 320 rows: 2 blocks of 256
    generating = [line for line in made.stderr.splitlines() if line.startswith("generating ")]
    assert len(generating) == 2 and re.fullmatch(r"generating sanity: 1/2 blocks \(50%\) in \d+ s, about \d+ s left",
                                                 generating[0]), made.stderr
    assert re.fullmatch(r"generating sanity: 2/2 blocks \(100%\) in \d+ s", generating[1]), made.stderr


def test_in_a_notebook_progress_stays_tqdm(monkeypatch):
    """A notebook's stderr is no terminal either, but it renders tqdm (as a widget): no log lines there."""
    import types

    from tqdm.auto import tqdm

    from featstore.progress import LogLines, progress_bar

    monkeypatch.setenv("FEATSTORE_PROGRESS_SECONDS", "soon")
    with pytest.raises(featstore.FeatstoreError, match="FEATSTORE_PROGRESS_SECONDS='soon' is not a number of seconds"):
        progress_bar(2, "build x", "column", True)
    monkeypatch.setenv("FEATSTORE_PROGRESS_SECONDS", "0")
    assert isinstance(progress_bar(2, "build x", "column", True), LogLines)  # pytest's stderr: not a terminal
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    bar = progress_bar(2, "build x", "column", True)
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    assert progress_bar(2, "build x", "column", False).disable


def test_real_subprocess_build_ls_and_offline_hub(sanity_dir, store_dir, featstore_home):
    env = dict(os.environ, FEATSTORE_STORE=store_dir, FEATSTORE_HOME=str(featstore_home), HF_HUB_OFFLINE="1")
    built = _featstore("build", "--dataset", "sanity", "--json", env=env)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["computed"] == 32
    listed = _featstore("ls", "--json", env=env)
    assert len(json.loads(listed.stdout)) == 34  # 32 features, each split's labels
    hub = _featstore("build", "--dataset", "nobody/no-such-adapters", env=env)
    assert hub.returncode == 2
    assert "Hugging Face Hub failed" in hub.stderr and "Traceback" not in hub.stderr


def test_the_first_use_of_a_preset_says_it_is_generating_it_once(tmp_path, store_dir):
    home = tmp_path / "fresh-home"
    env = dict(os.environ, FEATSTORE_STORE=store_dir, FEATSTORE_HOME=str(home), HF_HUB_OFFLINE="1")
    first = _featstore("build", "-d", "sanity", "-f", "stats", env=env)  # a log, not a terminal: no bar
    assert first.returncode == 0 and (home / "datasets" / "sanity" / "dataset_dict.json").exists(), first.stderr
    assert first.stderr.splitlines()[0] == (f"generating preset sanity (320 rows x 8 layers of 16x16 float32, 2.6 MB) "
                                            f"in {home / 'datasets' / 'sanity'}, once")
    again = _featstore("status", "-d", "sanity", env=env)
    assert again.returncode == 0 and "generating" not in again.stderr


def test_installed_command_finds_a_featurizer_module_in_the_current_directory(sanity_dir, store_dir, tmp_path,
                                                                              featstore_home):
    (tmp_path / "labfeats.py").write_text("def diag(x):\n    return x.diagonal(dim1=1, dim2=2)\n")
    command = os.path.join(os.path.dirname(sys.executable), "featstore")  # not python -m: no cwd on sys.path
    env = dict(os.environ, FEATSTORE_STORE=store_dir, FEATSTORE_HOME=str(featstore_home))
    built = subprocess.run([command, "build", "-d", "sanity", "-f", "labfeats:diag", "-l", "layer_000", "--json",
                            "--no-progress"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["computed"] == 2
    import featstore

    values = featstore.open("sanity", store=store_dir).load("layer_000", "labfeats:diag", split="test")
    column = featstore.read_column(datasets.load_from_disk(str(sanity_dir))["test"], "layer_000")
    assert np.array_equal(values.numpy(), np.diagonal(column, axis1=1, axis2=2))


def test_output_into_a_closed_pipe_ends_quietly(sanity_dir, store_dir, featstore_home):
    env = dict(os.environ, FEATSTORE_STORE=store_dir, FEATSTORE_HOME=str(featstore_home))
    assert _featstore("build", "-d", "sanity", "-f", "stats", "--no-progress", env=env).returncode == 0
    ls = subprocess.Popen([sys.executable, "-m", "featstore.cli", "ls"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)
    ls.stdout.close()  # like `featstore ls | head -0`: the reader is gone before the first line
    stderr = ls.stderr.read()
    assert ls.wait(timeout=300) == 141 and stderr == ""


def test_status_of_a_users_featurizer_names_how_to_check_it(sanity_dir, store_dir, tmp_path, featstore_home):
    project = tmp_path / "project"
    project.mkdir()
    (project / "labmod.py").write_text("import featstore\n\n@featstore.featurizer('test_labtrace')\n"
                                       "def trace(x):\n    return x.diagonal(dim1=1, dim2=2).sum(1, keepdim=True)\n")
    env = dict(os.environ, FEATSTORE_STORE=store_dir, FEATSTORE_HOME=str(featstore_home))

    def featstore_in(cwd, *args):
        return subprocess.run([sys.executable, "-m", "featstore.cli", *args], cwd=cwd, capture_output=True,
                              text=True, env=env, timeout=300, check=False)

    built = featstore_in(project, "build", "-d", "sanity", "-f", "labmod:trace", "-l", "layer_000", "--no-progress")
    assert built.returncode == 0, built.stderr
    elsewhere = featstore_in(tmp_path, "status", "-d", "sanity")  # labmod is not importable here
    assert elsewhere.returncode == 2 and "Traceback" not in elsewhere.stderr
    assert elsewhere.stderr.strip() == (
        "Error: the store holds features of 'sanity' from featurizer 'test_labtrace', which no module imported here "
        "registers: the build that made them had it from module 'labmod': add --import labmod (run where that module "
        "imports; in Python, import it first), or pass the featurizer as --featurizer module.path:function")
    (catalog_file,) = Path(store_dir, "catalog").glob("*.json")  # as a build before catalogs named modules wrote it
    catalog_file.write_text(catalog_file.read_text().replace('"modules": {"test_labtrace": "labmod"}', '"x": {}'))
    older = featstore_in(tmp_path, "status", "-d", "sanity")
    assert older.returncode == 2 and older.stderr.strip() == (
        "Error: the store holds features of 'sanity' from featurizer 'test_labtrace', which no module imported here "
        "registers: name the module that does with --import MODULE (in Python, import it first), or pass the "
        "featurizer as --featurizer module.path:function")
    named = featstore_in(project, "status", "-d", "sanity", "-f", "labmod:trace", "-l", "layer_000")
    assert named.returncode == 0 and "4 fresh, 0 stale, 0 missing" in named.stdout, named.stderr
    # or everything the store holds, its featurizers found by the names their module registers
    imported = featstore_in(project, "status", "-d", "sanity", "--import", "labmod", "-l", "layer_000")
    assert imported.returncode == 0 and "4 fresh, 0 stale, 0 missing" in imported.stdout, imported.stderr
    # a build finds it by that name too, once told the module
    unknown = featstore_in(project, "build", "-d", "sanity", "-f", "test_labtrace", "-l", "layer_001", "--no-progress")
    assert unknown.returncode == 2 and "import the module that registers it: --import MODULE" in unknown.stderr
    by_name = featstore_in(project, "build", "-d", "sanity", "--import", "labmod", "-f", "test_labtrace",
                           "-l", "layer_001", "--no-progress")
    assert by_name.returncode == 0 and "entries  2 computed (2 new), 0 reused" in by_name.stdout, by_name.stderr
    lockfile = str(project / "f.lock")
    locked = featstore_in(project, "lock", "-d", "sanity", "--import", "labmod", "-l", "layer_000", "-o", lockfile)
    assert locked.returncode == 0 and json.loads((project / "f.lock").read_text())["modules"] == ["labmod"]
    # and `featurizers` lists it among the built-ins
    listed = featstore_in(project, "featurizers", "--import", "labmod")
    assert listed.returncode == 0 and "\ntest_labtrace  (no parameters; version code:" in listed.stdout, listed.stderr
    assert "\nsvd  (k=16" in listed.stdout and "test_labtrace" not in featstore_in(project, "featurizers").stdout


def test_featurizers_describes_a_users_own_by_module_path(run, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labdesc.py").write_text('LOW = 0.1\n\n\ndef _q(x, q):\n    return x.quantile(q, dim=1, keepdim=True)\n\n\n'
                                         'def spread(x, q: float = 0.9):\n    """Quantile spread."""\n'
                                         '    return _q(x.flatten(1), q) - _q(x.flatten(1), LOW)\n')
    out = run("featurizers", "labdesc:spread", "svd").output.splitlines()
    assert out[0].startswith("labdesc:spread  (q=0.9; version code:") and out[1] == "    Quantile spread."
    assert out[2] == "    version hashed from: spread, LOW, _q"  # what its identity follows, as the code names it
    assert out[3].startswith("svd  (k=16, normalize=False; version 1)") and len([o for o in out if "  (" in o]) == 2
    mine, svd = json.loads(run("featurizers", "--json", "labdesc:spread", "svd").output)
    assert list(mine["code"]) == ["spread", "spread:LOW", "spread:_q"] and svd["code"] is None
    assert mine["version"] == out[0].partition("version ")[2].rstrip(")")
    listed = json.loads(run("featurizers", "--json").output)
    assert {"raw", "stats", "svd", "spectral", "randproj", "norms"} <= {f["name"] for f in listed}


def test_featurizers_shows_a_spec_with_its_parameters_as_set(run):
    out = [line for line in run("featurizers", "svd:k=3,dtype=bfloat16", "svd").output.splitlines() if "  (" in line]
    assert out == ["svd:k=3,dtype=bfloat16  (k=3, normalize=False; stored as bfloat16; version 1)",
                   "svd  (k=16, normalize=False; version 1)"]  # both: one name, two specs
    given, default = json.loads(run("featurizers", "--json", "randproj:dim=8", "randproj").output)
    assert (given["spec"], given["params"], default["params"]) == ("randproj:dim=8", {"dim": 8, "seed": 0},
                                                                   {"dim": 256, "seed": 0})


def _on_a_terminal(*args) -> tuple[int, str, str]:
    """Run `featstore ARGS` with stderr on a pseudo-terminal (120 columns: on 0, tqdm draws
    nothing): (exit status, stdout, what the terminal showed)."""
    import fcntl
    import pty
    import struct
    import termios

    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    run = subprocess.Popen([sys.executable, "-m", "featstore.cli", *args], stdout=subprocess.PIPE, stderr=terminal,
                           text=True)
    os.close(terminal)
    shown = b""
    while True:
        try:
            read = os.read(master, 4096)
        except OSError:  # the terminal's other end closed: the command exited
            break
        if not read:
            break
        shown += read
    os.close(master)
    return run.wait(timeout=300), run.stdout.read(), shown.decode(errors="replace")


def test_long_work_shows_progress_on_a_terminal(tmp_path, store_dir):
    from test_incremental import layers_of, patch_in_place, save_layers

    data = layers_of(2)
    path = save_layers(tmp_path / "d", data, num_shards=2)
    featstore.build(path, ["raw"], store=store_dir)
    patch_in_place(tmp_path / "d", data["layer_1"][3].copy(), 7.0)  # rows 0-19: file 0
    # The changed file's rows are compared before the build's own bar starts: a bar of their own.
    status, out, shown = _on_a_terminal("status", "-d", path, "-f", "raw", "--store", store_dir)
    assert status == 1 and "1 fresh, 1 stale, 0 missing" in out
    assert f"{path} train: 1 changed file" in shown and f"hash {path}" in shown  # then layer_1, whole
    status, out, shown = _on_a_terminal("build", "-d", path, "-f", "raw", "--store", store_dir, "--device", "cpu")
    assert status == 0 and "1 computed (1 input bytes changed), 1 reused" in out
    assert f"{path} train: 1 changed file" in shown and f"build {path}" in shown
    status, _, shown = _on_a_terminal("lock", "-d", path, "-f", "raw", "-o", str(tmp_path / "f.lock"))
    assert status == 0 and f"hash {path}" in shown  # no store: every column hashed
    patch_in_place(tmp_path / "d", data["layer_0"][3].copy(), 8.0)
    status, _, shown = _on_a_terminal("status", "-d", path, "-f", "raw", "--store", store_dir, "--no-progress")
    assert status == 1 and "hash" not in shown and "changed file" not in shown
    status, out, shown = _on_a_terminal("verify", "--store", store_dir, "--recompute", "1")
    assert status == 0 and "checked 3 entries" in out, out  # layer_0 raw, layer_1 raw before and after the change
    rate = re.search(r"checked 3 entries \([\d.]+ [KM]?B, ([\d.]+) [KMG]?B/s\)", out)
    assert rate and float(rate.group(1)) > 0, out  # in a unit that shows it (not "0.00 GB/s")
    assert "verify: " in shown and "recompute: " in shown


def test_verify_names_what_it_could_not_recompute_and_why(run, tmp_path, store_dir):
    """A feature whose data changed (stale) or is gone cannot be checked by recomputing it:
    `verify --recompute` says which and why, and does not fail for it."""
    from conftest import saved_layers_dataset

    paths = {name: str(tmp_path / name) for name in ("same", "changed", "gone")}
    keys = {}
    for seed, (name, path) in enumerate(paths.items()):  # other bytes, other entries
        saved_layers_dataset(path, layers=1, rows=12, dim=4, seed=seed)
        run("build", "-d", path, "-f", "stats", "--device", "cpu", "--no-progress")
        keys[name] = featstore.open(path, store=store_dir).row("layer_000", "stats").key
    saved_layers_dataset(paths["changed"], layers=1, rows=12, dim=4, seed=9)
    shutil.rmtree(paths["gone"])
    out = run("verify", "--recompute", "1").output
    assert f"skipped  {keys['changed']}  {paths['changed']} train/layer_000 stats: stale (input bytes changed), " \
           "nothing to compare with" in out
    assert re.search(rf"skipped  {keys['gone']}  {re.escape(paths['gone'])} train/layer_000 stats: cannot load it: "
                     r".*no such file or directory", out), out
    assert keys["same"] not in out and "recomputed 1: 0 corrupt, 0 mismatched, 2 skipped (stale or not loadable)" in out


def test_status_of_every_dataset_reports_the_others_when_one_is_deleted(tmp_path, store_dir):
    """Without --dataset, a dataset whose data was deleted stopped the whole status (one error, no
    report): the others are reported, the deleted one's error follows, exit 2."""
    from conftest import saved_layers_dataset

    paths = [str(tmp_path / name) for name in ("kept", "deleted")]
    for seed, path in enumerate(paths):
        saved_layers_dataset(path, layers=1, rows=8, dim=4, seed=seed)
        featstore.build(path, ["stats"], store=store_dir, device="cpu")
    shutil.rmtree(paths[1])
    env = dict(os.environ, FEATSTORE_STORE=store_dir)
    out = _featstore("status", env=env)
    assert out.returncode == 2 and out.stdout.endswith("kept: 1 fresh, 0 stale, 0 missing\n"), out
    assert out.stderr.startswith(f"Error: --dataset {paths[1]!r}: no such file") and "featstore forget" in out.stderr
    reports = json.loads(_featstore("status", "--json", env=env).stdout)
    assert [(r["dataset"], r["fresh"], "error" in r) for r in reports] == [(paths[0], True, False),
                                                                           (paths[1], False, True)]


def test_status_skips_a_dataset_passed_from_python_and_says_so(tmp_path, store_dir):
    """A datasets.Dataset object is catalogued by its fingerprint, which no name opens: status of
    every dataset tried it as a Hub id; it now notes it, and checks the rest."""
    from conftest import saved_layers_dataset

    ds = datasets.Dataset.from_dict({"w": np.zeros((6, 2, 2), np.float32)})
    featstore.build(ds, ["stats"], store=store_dir, device="cpu")
    saved_layers_dataset(tmp_path / "d", layers=1, rows=8, dim=4)
    featstore.build(str(tmp_path / "d"), ["stats"], store=store_dir, device="cpu")
    env = dict(os.environ, FEATSTORE_STORE=store_dir)
    every = _featstore("status", env=env)
    assert every.returncode == 0 and every.stdout.endswith("d: 1 fresh, 0 stale, 0 missing\n"), every
    assert f"note: skipped fingerprint:{ds._fingerprint}, a datasets.Dataset built from Python" in every.stderr
    named = _featstore("status", "-d", f"fingerprint:{ds._fingerprint}", env=env)
    assert named.returncode == 2 and "names a datasets.Dataset that was passed from Python" in named.stderr
    assert featstore.status(ds, store=store_dir).fresh  # from Python, with the object


def test_status_of_every_dataset_fails_where_it_could_check_none(store_dir):
    """A store holding only a datasets.Dataset built from Python: status skipped it and exited 0,
    so a CI gate passed without checking anything. A store that catalogues nothing passes, saying so."""
    ds = datasets.Dataset.from_dict({"w": np.zeros((6, 2, 2), np.float32)})
    featstore.build(ds, ["stats"], store=store_dir, device="cpu")
    env = dict(os.environ, FEATSTORE_STORE=store_dir)
    for args in [(), ("--json",)]:
        blind = _featstore("status", *args, env=env)
        assert (blind.returncode, blind.stdout) == (2, ""), blind
        assert f"Error: status checked no dataset: the store at {store_dir} catalogues only datasets.Dataset" \
               in blind.stderr
    assert _featstore("forget", "-d", f"fingerprint:{ds._fingerprint}", env=env).returncode == 0
    empty = _featstore("status", env=env)
    assert empty.returncode == 0, empty
    assert empty.stdout == f"the store at {store_dir} catalogues no dataset: nothing to check\n"
    assert json.loads(_featstore("status", "--json", env=env).stdout) == []


def test_ls_says_when_its_filters_match_nothing_the_store_holds(run, sanity_dir, store_dir):
    run("build", "--dataset", "sanity", "-f", "stats", "--layers", "layer_000", "--no-progress")
    out = run("ls", "--dataset", "sanity", "--layer", "layer_9*").output
    assert out.strip().endswith(f"no features of sanity in {store_dir} match --layers layer_9*; `featstore ls "
                                "--summary` lists what it holds"), out
    assert run("ls", "--dataset", "nothere").output.strip().endswith(f"no features of nothere in {store_dir} "
                                                                     "(it holds: sanity)")


def test_every_command_takes_a_layer_with_glob_characters_in_its_name_by_that_name(run, tmp_path, store_dir):
    """`w[0]` as a glob matches only `w0`: build, ls, status, forget and load each select the
    column `w[0]` itself too."""
    from conftest import matrices

    path = str(tmp_path / "d")
    datasets.Dataset.from_dict({"w[0]": matrices(6), "w[1]": matrices(6, seed=1)}).save_to_disk(path)
    assert "1 computed" in run("build", "-d", path, "-f", "stats", "--layers", "w[0]", "--no-progress").output
    assert [line.split()[2] for line in run("ls", "-d", path, "--layer", "w[0]").output.splitlines()[1:-1]] == ["w[0]"]
    run("build", "-d", path, "-f", "stats", "--no-progress")
    listed = run("ls", "-d", path, "--layers", "w[1]", "--layers", "w[0]").output.splitlines()[1:-1]
    assert [line.split()[2] for line in listed] == ["w[0]", "w[1]"]
    run("forget", "-d", path, "--layers", "w[1]")
    assert run("status", "-d", path, "-f", "stats", "--layers", "w[0]").output.strip().endswith(
        "1 fresh, 0 stale, 0 missing")
    with featstore.open(path, store=store_dir) as fs:
        assert list(fs.load_many("w[0]", "stats")) == ["w[0]"]
    assert "forgot 1 feature of " in run("forget", "-d", path, "--layers", "w[0]").output
    assert featstore.status(path, ["stats"], layers="w[0]", store=store_dir).counts == {"fresh": 0, "stale": 0, "missing": 1}


def test_status_names_the_build_that_would_bring_the_features_up_to_date(run, sanity_dir, store_dir, tmp_path,
                                                                          monkeypatch):
    """`featstore build -d D` builds stats and svd, while status checks the featurizers it is given
    or the store holds: its 'a build would compute' comes with the build that does that."""
    import shlex

    run("build", "-d", "sanity", "-f", "raw", "-l", "layer_000", "--no-progress")
    checked = ("status", "-d", "sanity", "-f", "svd:k=4", "-f", "stats:dtype=float16", "-l", "layer_00[01]")
    shown = run(*checked, ok=False)
    assert shown.exit_code == 1, shown.output
    (command,) = [line for line in shown.output.splitlines() if line.startswith("  to update: ")]
    assert command == ("  to update: featstore build --dataset sanity --featurizer svd:k=4 --featurizer "
                       "stats:dtype=float16 --layers 'layer_00[01]'")  # the specs as given
    assert "8 computed" in run(*shlex.split(command.removeprefix("  to update: featstore ")), "--no-progress").output
    assert "to update" not in run(*checked).output
    given = run("status", "-d", "sanity", "-f", "svd", "--dtype", "float16", "-l", "layer_002", "--store", store_dir,
                ok=False)
    assert (f"  to update: featstore build --dataset sanity --featurizer svd --dtype float16 --layers layer_002 "
            f"--store {store_dir}\n") in given.output
    (tmp_path / "feats_update.py").write_text(
        "import featstore\n\n@featstore.featurizer('test_update_colmax', version='1')\ndef colmax(x):\n"
        "    return x.amax(1)\n")
    monkeypatch.chdir(tmp_path)
    run("build", "-d", "sanity", "--import", "feats_update", "-f", "test_update_colmax", "-l", "layer_000",
        "--no-progress")
    shown = run("status", "-d", "sanity", "--import", "feats_update", "-l", "layer_00[01]", ok=False).output
    assert ("  to update: featstore build --dataset sanity --import feats_update --featurizer raw --featurizer "
            "stats:dtype=float16 --featurizer svd:k=4 --featurizer test_update_colmax --layers 'layer_00[01]'\n"
            ) in shown, shown  # the store's specs, with the module that registers one of them
    run("forget", "-d", "sanity", "-f", "raw", "-f", "test_update_colmax")
    run("build", "-d", "sanity", "-l", "layer_00[01]", "--no-progress")  # build's defaults, stats and svd, only
    run("forget", "-d", "sanity", "-f", "svd:k=4", "-f", "stats:dtype=float16")
    assert "  to update: featstore build --dataset sanity\n" in run("status", "-d", "sanity", ok=False).output


def test_status_and_lock_take_the_dtype_a_build_was_given(run, sanity_dir, store_dir, tmp_path):
    """`build --dtype float16 -f svd:k=4` then `status -f svd:k=4` said 'missing, not built' for all
    of it, and status had no --dtype to say what was built."""
    layers = ("--layers", "layer_00[01]")
    run("build", "-d", "sanity", "-f", "svd:k=4", "--dtype", "float16", *layers, "--no-progress")
    asked = run("status", "-d", "sanity", "-f", "svd:k=4", *layers, ok=False)
    assert asked.exit_code == 1
    assert ("missing  train  layer_000  svd:k=4  not built (the store holds svd:k=4,dtype=float16: the same "
            "featurizer, another stored dtype)") in asked.output
    assert "sanity: 6 fresh, 0 stale, 0 missing" in run("status", "-d", "sanity", "-f", "svd:k=4", "--dtype", "float16",
                                                        *layers).output  # 4 entries, 2 splits' labels
    lockfile = str(tmp_path / "f.lock")
    run("lock", "-d", "sanity", "-f", "svd:k=4", "--dtype", "float16", *layers, "-o", lockfile)
    entries = json.loads((tmp_path / "f.lock").read_text())["entries"]  # split -> layer -> featurizer -> key
    assert {f for layers_ in entries.values() for per_layer in layers_.values() for f in per_layer} == {
        "svd:k=4,dtype=float16"}
    assert run("status", "--lock", lockfile).exit_code == 0
    refused = run("status", "--lock", lockfile, "--dtype", "float16", ok=False)
    assert refused.exit_code == 2 and "drop --featurizer and --dtype" in refused.output


def test_status_and_lock_run_outside_the_main_thread(run, sanity_dir, tmp_path):
    """Their Ctrl-C handler is installed only in the main thread: from another (a tool running the
    CLI in a thread), signal.signal raised ValueError and they exited 2."""
    run("build", "-d", "sanity", "-f", "stats", "--layers", "layer_000", "--no-progress")
    results = []
    worker = threading.Thread(target=lambda: results.extend(
        run(command, "-d", "sanity", "-f", "stats", "--layers", "layer_000", *options, ok=False)
        for command, options in (("status", ()), ("lock", ("-o", str(tmp_path / "f.lock"))))))
    worker.start()
    worker.join()
    assert [r.exit_code for r in results] == [0, 0], [r.output for r in results]
    assert "sanity: 4 fresh, 0 stale, 0 missing" in results[0].output  # 2 splits, their labels
    assert "wrote" in results[1].output and (tmp_path / "f.lock").exists()


def test_status_against_a_lockfile_checks_the_layers_it_was_written_with(run, sanity_dir, tmp_path):
    """A lockfile of some layers: `status --lock` called each other layer 'not in the lockfile'
    (exit 1) unless the job repeated the lock's --layers."""
    lockfile = str(tmp_path / "f.lock")
    wrote = run("lock", "-d", "sanity", "-f", "stats", "--layers", "layer_00[01]", "-o", lockfile).output
    assert f"wrote {lockfile}: 6 entries" in wrote  # as status counts them: with each split's labels
    assert json.loads((tmp_path / "f.lock").read_text())["layers"] == ["layer_00[01]"]
    assert run("status", "--lock", lockfile).output == "sanity: 6 fresh, 0 stale, 0 missing\n"  # and 2 of labels
    assert run("status", "--lock", lockfile, "--layers", "layer_000").output == "sanity: 4 fresh, 0 stale, 0 missing\n"
    older = json.loads((tmp_path / "f.lock").read_text())
    older["columns"]["train"]["layer_001"] = "0" * 32  # locked before the data changed
    older["entries"]["train"]["layer_001"]["stats"] = "1" * 32
    (tmp_path / "old.lock").write_text(json.dumps(older))
    stale = run("status", "--lock", str(tmp_path / "old.lock"), ok=False)
    assert stale.exit_code == 1 and stale.output.splitlines()[-1] == (  # build it, then lock it again
        "  to update: featstore build --dataset sanity --featurizer stats --layers 'layer_00[01]' && featstore lock "
        f"--dataset sanity --featurizer stats --layers 'layer_00[01]' -o {tmp_path / 'old.lock'}"), stale.output
    whole = str(tmp_path / "whole.lock")
    run("lock", "-d", "sanity", "-f", "stats", "-o", whole)
    assert json.loads((tmp_path / "whole.lock").read_text())["layers"] is None
    assert run("status", "--lock", whole).output == "sanity: 18 fresh, 0 stale, 0 missing\n"


def test_status_against_a_lockfile_it_cannot_use_is_an_error_that_says_so(run, sanity_dir, tmp_path):
    """A lockfile missing, not JSON or of another format: exit 2 (an error, not 1: stale), with what
    to do, never a traceback."""
    (tmp_path / "torn.lock").write_text('{"featstore_lock": 1, "columns"')
    (tmp_path / "other.lock").write_text('{"lockfileVersion": 3}')
    for name, message in [("absent.lock", "cannot read lockfile {}: No such file or directory; write one with `featstore lock`"),
                          ("torn.lock", "{} is not a featstore lockfile (Expecting"),
                          ("other.lock", "{} is not a featstore lockfile of format")]:
        path = str(tmp_path / name)
        result = run("status", "--lock", path, ok=False)
        assert result.exit_code == 2 and f"Error: {message.format(path)}" in result.output, result.output
        assert "Traceback" not in result.output


def test_verify_forget_gc_and_lock_speak_json_to_scripts(run, sanity_dir, store_dir):
    """What a CI job or a cron script parses: each report as JSON, true to what happened on disk."""
    run("build", "-d", "sanity", "-f", "stats", "-l", "layer_00[01]", "--no-progress")
    entries = {p.name: p for p in Path(store_dir, "entries").glob("*/*")}
    assert len(entries) == 6  # 2 splits x 2 layers, and each split's labels
    victim = json.loads(run("ls", "--json", "--layer", "layer_001", "--split", "test").output)[0]["key"]
    chunk = next(p for p in entries[victim].rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(bytes([chunk.read_bytes()[0] ^ 1]) + chunk.read_bytes()[1:])

    checked = run("verify", "--json", ok=False)
    report = json.loads(checked.output)
    assert checked.exit_code == 1 and (report["ok"], report["checked"], report["repaired"]) == (False, 6, [])
    assert list(report["corrupt"]) == [victim] and "does not match its digest" in report["corrupt"][victim]
    repaired = json.loads(run("verify", "--json", "--repair", ok=False).output)
    assert repaired["repaired"] == [victim] and not entries[victim].exists()
    assert json.loads(run("verify", "--json").output)["ok"]  # what is left is sound

    lockfile = Path(store_dir).parent / "sanity.lock"
    run("lock", "-d", "sanity", "-f", "stats", "-l", "layer_00[01]", "-o", str(lockfile))
    assert run("lock", "-d", "sanity", "-f", "stats", "-l", "layer_00[01]", "-o", "-").output == lockfile.read_text()

    forgotten = json.loads(run("forget", "-d", "sanity", "--json").output)
    assert forgotten["catalog_removed"] and forgotten["unreferenced"] == 5
    assert {(r["split"], r["layer"], r["featurizer"]) for r in forgotten["forgotten"]} == {
        (split, layer, "stats") for split in ("train", "test") for layer in ("layer_000", "layer_001")}
    sizes = {key: sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) for key, path in entries.items()
             if path.exists()}
    collected = json.loads(run("gc", "--json").output)
    assert {r["key"]: r["bytes"] for r in collected["removed"]} == sizes
    assert collected["freed"] == sum(sizes.values()) == collected["size_before"] - collected["size_after"]
    assert not list(Path(store_dir, "entries").glob("*/*"))


def test_ctrl_c_exits_130_and_speaks_of_builds_only_for_a_build(run, sanity_dir, monkeypatch):
    from featstore import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "status", interrupted)
    status = run("status", "-d", "sanity", ok=False)
    assert (status.exit_code, status.output) == (130, "\nInterrupted.\n")  # not 1, which a CI gate reads as stale
    monkeypatch.setattr(api, "build", interrupted)
    build = run("build", "-d", "sanity", ok=False)
    assert build.exit_code == 130
    assert build.output == ("\nInterrupted. A build keeps and catalogues the columns it finished; the next build "
                            "computes the rest.\n")


def test_verify_imports_the_module_of_a_featurizer_registered_by_name(sanity_dir, store_dir, tmp_path):
    """A featurizer built as `-f labverify:colmax` is catalogued by its registered name, which
    `verify --recompute` could not resolve: every such feature was skipped, with no way to check it."""
    (tmp_path / "labverify.py").write_text(
        "import featstore\n\n@featstore.featurizer('test_verify_colmax', version='1')\n"
        "def colmax(x):\n    return x.amax(1)\n")

    def featstore_(*args):
        return subprocess.run([sys.executable, "-m", "featstore.cli", *args, "--store", store_dir], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, check=False)

    built = featstore_("build", "-d", "sanity", "-f", "labverify:colmax", "-l", "layer_00[01]", "--no-progress")
    assert built.returncode == 0, built.stderr
    blind = featstore_("verify", "--recompute", "1", "--no-progress")
    assert blind.returncode == 0 and "recomputed 0: 0 corrupt, 0 mismatched, 4 skipped" in blind.stdout
    assert "cannot load it: unknown featurizer 'test_verify_colmax'" in blind.stdout
    assert "(one of yours, from module 'labverify': `featstore verify --import labverify`)" in blind.stdout
    (catalog_file,) = Path(store_dir, "catalog").glob("*.json")  # as a build before catalogs named modules wrote it
    modules = '"modules": {"test_verify_colmax": "labverify"}'
    catalog_file.write_text(catalog_file.read_text().replace(modules, '"modules": {}'))
    older = featstore_("verify", "--recompute", "1", "--no-progress")
    assert "(one of yours registered by name: `featstore verify --import` its module)" in older.stdout, older.stdout
    checked = featstore_("verify", "--recompute", "1", "--import", "labverify", "--no-progress")
    assert checked.returncode == 0 and "recomputed 4: 0 corrupt, 0 mismatched\n" in checked.stdout, checked.stdout

    # Its code changed under the same pinned version: status trusts the pin, a recompute does not.
    (tmp_path / "labverify.py").write_text((tmp_path / "labverify.py").read_text().replace("amax", "amin"))
    assert featstore_("status", "-d", "sanity", "-l", "layer_00[01]", "--import", "labverify").returncode == 0
    changed = featstore_("verify", "--recompute", "1", "--import", "labverify", "--no-progress")
    assert changed.returncode == 1 and "recomputed 4: 0 corrupt, 4 mismatched\n" in changed.stdout, changed.stdout
    mismatches = [line for line in changed.stdout.splitlines() if line.startswith("mismatch ")]
    assert len(mismatches) == 4 and all("test_verify_colmax: recomputed differs by" in m and
                                        "under a pinned version=, bump the version" in m for m in mismatches)
    assert any(" train/layer_000 " in m for m in mismatches) and any(" test/layer_001 " in m for m in mismatches)
    again = featstore_("verify", "--recompute", "1", "--import", "labverify", "--no-progress", "--repair")
    assert again.returncode == 1 and "4 mismatched\n" in again.stdout and "dropped" not in again.stdout  # intact
    missing = featstore_("verify", "--import", "labverfy")
    assert missing.returncode == 2 and "cannot import 'labverfy', which defines featurizers" in missing.stderr
