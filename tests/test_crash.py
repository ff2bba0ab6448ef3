"""A real `featstore build` killed with SIGKILL (or interrupted with Ctrl-C) mid-way leaves no
entry that looks valid but is not, and the next build completes from where the store is; Ctrl-C
ends the commands that only read at once."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import datasets
import pytest
import torch
from conftest import saved_layers_dataset

import featstore
from featstore import read_column
from featstore.featurizers import parse_spec
from featstore.store import Store


def _entry_keys(store_dir):
    root = os.path.join(store_dir, "entries")
    if not os.path.isdir(root):
        return []
    return [k for shard in os.listdir(root) for k in os.listdir(os.path.join(root, shard))]


@pytest.mark.parametrize("kill_after", [1, 6, 20])
def test_sigkill_mid_build_leaves_only_complete_entries(tmp_path, store_dir, kill_after):
    data = tmp_path / "data"
    saved_layers_dataset(data, layers=16, rows=400, dim=64)
    command = [sys.executable, "-m", "featstore.cli", "build", "--dataset", str(data), "-f", "raw", "-f", "svd",
               "--store", store_dir, "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_entry_keys(store_dir)) < kill_after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"

    store = Store.open(store_dir)
    assert store.read_catalog(os.path.realpath(data)) is None  # the catalog is written last
    survivors = _entry_keys(store_dir)
    assert len(survivors) >= kill_after
    for key in survivors:
        store.read_entry(key)  # complete and matching its digest, or this raises

    report = featstore.build(str(data), ["raw", "svd"], store=store_dir, device="cpu")
    assert report.reused == len(survivors) and report.computed == 32 - len(survivors)
    fs = featstore.open(str(data), store=store_dir)
    column = read_column(datasets.load_from_disk(str(data)), "layer_011")
    expected = parse_spec("svd")(torch.from_numpy(column.copy()))
    torch.testing.assert_close(fs.load("layer_011", "svd"), expected, rtol=0, atol=0)
    assert len(_entry_keys(store_dir)) == 32


def _interruptible_build(tmp_path, store_dir, seconds, *options):
    """A `featstore build` subprocess (with `options`) over 8 columns of a featurizer that sleeps
    `seconds` per column (and first adds a file to started/), with Ctrl-C handled as in a terminal,
    and its thread stacks printed on SIGABRT (see `_ended`)."""
    data = tmp_path / "data"
    saved_layers_dataset(data, layers=8, rows=32, dim=4)
    (tmp_path / "started").mkdir()
    (tmp_path / "slowfeat.py").write_text(  # (a build's plan first calls it on one row, to learn its shape)
        "import os, time, uuid\n\ndef slow(x):\n    if len(x) > 1:\n"
        "        open(os.path.join('started', uuid.uuid4().hex), 'w').close()\n"
        f"        time.sleep({seconds})\n    return x.sum(2)\n")
    command = [sys.executable, "-m", "featstore.cli", "build", "--dataset", str(data), "-f", "slowfeat:slow",
               "--store", store_dir, "--no-progress", "--device", "cpu", *options]
    # Two compute lanes whatever the cores: on 16, all 8 columns ran at once and the build had
    # finished when the signal came (seen on the GPU host).
    return data, command, _interruptible(command, tmp_path, {"OMP_NUM_THREADS": "2"})


def _interruptible(command, cwd, env=None):
    """`command` started in `cwd` with Ctrl-C handled as in a terminal (a child inherits an ignored
    SIGINT, as in this suite run in the background; a handled one it does not), and its thread
    stacks printed on SIGABRT (see `_ended`)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {}), "PYTHONFAULTHANDLER": "1"})
    finally:
        signal.signal(signal.SIGINT, previous)


def _ended(proc, timeout=120):
    """`proc`'s (stdout, stderr) once it ends; if it does not, its threads' stacks (faulthandler) in
    the failure."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        pytest.fail(f"the command did not end after Ctrl-C; where its threads were:\n{proc.communicate()[1]}")


# What stalls in a thread (never the main one) while each read-only command runs: status and lock
# hash the columns in threads; ls asks in threads which entries the store still holds; verify
# --recompute reads an entry's chunks in threads (its check reads them in the main thread).
STALLS = {
    "status": ("freshness", "freshness.column_digest"),
    "lock": ("freshness", "freshness.column_digest"),
    "ls": ("store", "store.Store.has_entry"),
    "verify": ("storage", "storage.LocalStorage.read_into"),
}


@pytest.mark.parametrize("command", sorted(STALLS))
def test_ctrl_c_ends_read_only_commands_at_once_even_while_a_read_hangs(tmp_path, store_dir, command,
                                                                         monkeypatch):
    """status, lock, ls and verify only read (verify --repair removes in one rename): Ctrl-C ends
    them at once with 130, even while one of their threads is stuck in a read (a stalled network
    filesystem; here a function that sleeps), which Python's KeyboardInterrupt would wait for."""
    data, other = tmp_path / "data", tmp_path / "other"
    saved_layers_dataset(data, layers=2, rows=8, dim=4)
    saved_layers_dataset(other, layers=1, rows=8, dim=4)
    monkeypatch.setattr("featstore.store.CHUNK_BYTES", 64)  # entries of several chunks, read in threads
    featstore.build(str(other), ["raw"], store=store_dir, device="cpu")  # a store, with no digests of `data`
    held = _entry_keys(store_dir)
    module, stalled = STALLS[command]
    (tmp_path / "stall.py").write_text(textwrap.dedent(f"""\
        import time
        from featstore import cli, {module}

        def stalled(*args):
            open("stalled", "w").close()
            time.sleep(300)

        {stalled} = stalled
        cli.main()
        """))
    options = {"verify": ["--recompute", "1"], "ls": []}.get(command, ["-d", str(data), "-f", "raw"])
    proc = _interruptible([sys.executable, "stall.py", command, *options, "--store", store_dir], tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "stalled").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    stderr = _ended(proc, timeout=30)[1]
    assert proc.returncode == 130, stderr
    assert stderr.strip().endswith("Interrupted.") and "Traceback" not in stderr, stderr
    assert not (tmp_path / "featstore.lock").exists()
    assert _entry_keys(store_dir) == held


def test_ctrl_c_while_a_build_compares_changed_files_waits_then_stops_and_again_at_once(tmp_path, store_dir):
    """A build's plan compares the rows of the dataset files changed since the last build in
    threads (to reuse the columns they leave alone). Ctrl-C there waits for them, as it does for the
    columns in flight, and a second ends the build at once, even while a read hangs; neither
    changes the store."""
    data = tmp_path / "data"
    saved_layers_dataset(data, layers=2, rows=16, dim=4, num_shards=4)
    featstore.build(str(data), ["raw"], store=store_dir, device="cpu")
    held = _entry_keys(store_dir)
    touched = sorted(data.glob("data-*.arrow"))[1]
    os.utime(touched, (time.time() + 60, time.time() + 60))  # one file of four to compare again
    (tmp_path / "stall.py").write_text(textwrap.dedent("""\
        import time
        from featstore import cli
        from featstore.split import Split

        def stalled(*args):
            open("stalled", "w").close()
            time.sleep(300)

        Split.file_digest = stalled
        cli.main()
        """))
    proc = _interruptible([sys.executable, "stall.py", "build", "-d", str(data), "-f", "raw", "--store", store_dir,
                           "--device", "cpu", "--no-progress"], tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "stalled").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    assert proc.poll() is None  # waiting for the comparison
    proc.send_signal(signal.SIGINT)
    stderr = _ended(proc, timeout=30)[1]
    assert proc.returncode == 130, stderr
    assert "Ctrl-C: finishing the comparison of the changed files, then stopping" in stderr, stderr
    assert "Stopped." in stderr and "Traceback" not in stderr, stderr
    assert _entry_keys(store_dir) == held
    assert featstore.build(str(data), ["raw"], store=store_dir, device="cpu").computed == 0


def test_ctrl_c_ends_a_build_with_130_and_catalogues_every_column_it_began(tmp_path, store_dir):
    data, command, proc = _interruptible_build(tmp_path, store_dir, seconds=0.3)
    deadline = time.monotonic() + 120
    while len(_entry_keys(store_dir)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stderr = _ended(proc)[1]
    assert proc.returncode == 130, stderr
    assert "Ctrl-C: finishing the columns in flight" in stderr, stderr
    assert "Interrupted. A build keeps and catalogues the columns it finished" in stderr and "Traceback" not in stderr
    kept = _entry_keys(store_dir)
    assert 3 <= len(kept) < 8
    assert len(os.listdir(tmp_path / "started")) == len(kept)  # no column begun was left unfinished
    # The columns in flight when the signal came finished: all are catalogued, gc keeps them, and the
    # next build reuses them.
    catalogued = {r.key for r in Store.open(store_dir).read_catalog(os.path.realpath(data)).rows}
    assert catalogued == set(kept)
    assert subprocess.run([sys.executable, "-m", "featstore.cli", "gc", "--store", store_dir], check=False).returncode == 0
    assert set(_entry_keys(store_dir)) == catalogued
    again = subprocess.run([*command, "--json"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["reused"], report["computed"]) == (len(catalogued), 8 - len(catalogued))


def test_a_second_ctrl_c_stops_a_build_at_once_leaving_nothing_partial(tmp_path, store_dir):
    data, _, proc = _interruptible_build(tmp_path, store_dir, seconds=60)
    deadline = time.monotonic() + 120
    while not os.listdir(tmp_path / "started") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    first = proc.stderr.readline() + proc.stderr.readline()  # a blank line, then what it does
    assert "finishing the columns in flight" in first, first
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stderr = _ended(proc, timeout=30)[1]
    assert proc.returncode == 130, stderr
    assert time.monotonic() - began < 30  # not after the columns' 60 s
    assert "Stopped. The features it finished are in the store, uncatalogued" in stderr, stderr
    assert _entry_keys(store_dir) == [] and Store.open(store_dir).read_catalog(os.path.realpath(data)) is None

def test_ctrl_c_ends_a_dask_build_quietly_and_the_next_build_reuses_what_it_published(tmp_path, store_dir):
    pytest.importorskip("dask.distributed")
    data, command, proc = _interruptible_build(tmp_path, store_dir, 2.0, "--workers", "2")  # a task per column
    deadline = time.monotonic() + 120
    while len(_entry_keys(store_dir)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # for the client to hear that the tasks of those 3 columns finished (a task returns once it published)
    proc.send_signal(signal.SIGINT)
    stderr = _ended(proc, timeout=60)[1]
    assert proc.returncode == 130, stderr
    assert "Ctrl-C: cancelling the tasks not finished, cataloguing those finished" in stderr, stderr
    # Dask's client, interrupted inside its event loop, printed a traceback per task; its workers logged
    # a warning per cancelled task, and now and then a heartbeat's traceback as the scheduler closed
    assert "Traceback" not in stderr and "Task exception was never retrieved" not in stderr, stderr
    assert "distributed." not in stderr, stderr
    kept = _entry_keys(store_dir)
    assert 3 <= len(kept) < 8
    catalogued = {r.key for r in Store.open(store_dir).read_catalog(os.path.realpath(data)).rows}
    assert len(catalogued) >= 3 and catalogued <= set(kept)  # the tasks finished; those cancelled published the rest
    again = subprocess.run([*command, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           check=False)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["reused"], report["computed"]) == (len(kept), 8 - len(kept))


def test_in_a_script_a_second_ctrl_c_raises_keyboardinterrupt_instead_of_ending_the_process(tmp_path, store_dir):
    """A notebook kernel or a training script calling featstore.build must survive a second
    interrupt: only the featstore command ends the process on it."""
    data = tmp_path / "data"
    saved_layers_dataset(data, layers=8, rows=32, dim=4)
    (tmp_path / "started").mkdir()
    (tmp_path / "script.py").write_text(textwrap.dedent(f"""
        import os, sys, time, uuid
        import featstore

        def slow(x):
            if len(x) > 1:
                open(os.path.join("started", uuid.uuid4().hex), "w").close()
                time.sleep(2)
            return x.sum(2)

        if __name__ == "__main__":
            try:
                featstore.build({str(data)!r}, ["script:slow"], store={store_dir!r}, device="cpu")
            except KeyboardInterrupt:
                print("the script goes on", flush=True)
    """))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "script.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "2",
                                                                        "PYTHONFAULTHANDLER": "1"})
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 120
    while not os.listdir(tmp_path / "started") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    first = proc.stderr.readline() + proc.stderr.readline()
    assert "Ctrl-C: finishing the columns in flight, then stopping (interrupt again to stop waiting)" in first, first
    proc.send_signal(signal.SIGINT)
    out, stderr = _ended(proc)
    assert proc.returncode == 0 and out == "the script goes on\n", stderr
    assert "Stopped." not in stderr
