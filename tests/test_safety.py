"""The store is never silently wrong: crashes at every storage step, I/O faults, corruption, racing
builders and gc under readers, each with real processes where it matters."""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import crash_builds, saved_layers_dataset

import featstore
from featstore import StoreError
from featstore import storage as storage_module
from featstore.keys import dataset_slug
from featstore.sources import dataset_id
from featstore.store import Store

FEATURIZERS = ["raw", "stats", "svd:k=2"]


def _cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "featstore.cli", *args], check=False, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, **kwargs)


def _contents(store_dir, dataset) -> dict:
    """Every catalogued feature of `dataset`, as bytes: what "bit-identical" compares."""
    fs = featstore.open(dataset, store=store_dir)
    with fs:
        return {r.slot: (r.key, fs.load(r.layer, r.featurizer, r.split).numpy().tobytes()) for r in fs.catalog.rows}


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "data"
    saved_layers_dataset(path, layers=4, rows=30, dim=8)
    return str(path)


def test_sigkill_at_every_storage_step_leaves_a_clean_store_and_resumes_bit_identical(tmp_path, small):
    reference = str(tmp_path / "reference")
    featstore.build(small, FEATURIZERS, store=reference, device="cpu")
    expected = _contents(reference, small)

    def store(point: int) -> str:
        return str(tmp_path / f"store-{point}")

    codes = crash_builds(["build", "-d", small, *[a for f in FEATURIZERS for a in ("-f", f)], "--no-progress",
                          "--device", "cpu"], range(1, 61), store)
    killed = [(point, store(point)) for point, rc in sorted(codes.items()) if rc == -signal.SIGKILL]
    assert all(rc in (0, -signal.SIGKILL) for rc in codes.values())
    assert len(killed) >= 50, f"only {len(killed)} kill points fell inside the build"
    for point, store_dir in killed:
        if not os.path.exists(os.path.join(store_dir, "featstore.json")):
            continue  # killed before the store existed
        store = Store.open(store_dir)
        report = featstore.verify(store_dir)
        assert report.ok, (point, report.corrupt)
        assert all(store.check_entry(k)[0] is None for k in store.entry_keys())  # no partial entry is visible
        featstore.build(small, FEATURIZERS, store=store_dir, device="cpu")  # resume
        assert _contents(store_dir, small) == expected, point
        assert featstore.gc(store_dir).removed == []  # nothing unreferenced: only staging leftovers go
        staging = os.path.join(store_dir, "staging")
        assert not os.path.isdir(staging) or os.listdir(staging) == []  # gc took the crashed build's leftovers


def test_an_io_error_names_the_file_and_leaves_the_store_as_it_was(tmp_path, small, monkeypatch):
    store_dir = str(tmp_path / "store")
    featstore.build(small, ["raw"], store=store_dir)
    before = _contents(store_dir, small)
    keys = set(Store.open(store_dir).entry_keys())
    calls = {"n": 0}

    def failing_open(path, mode="r", *args, **kwargs):  # the disk fills up at the 5th file written
        if "x" in mode or "w" in mode:
            calls["n"] += 1
            if calls["n"] == 5:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(storage_module, "open", failing_open, raising=False)
    with pytest.raises(StoreError, match=r"cannot write .*/staging/.*: No space left on device; free some space "
                                         r"and run it again"):
        featstore.build(small, ["raw", "stats"], store=store_dir)
    monkeypatch.undo()
    after = _contents(store_dir, small)  # loads every catalogued feature, checking its digests
    # What the store held is as it was; stats columns that finished before the failure may have joined it.
    assert {slot: v for slot, v in after.items() if slot[2] == "raw"} == before
    assert {slot[2] for slot in after} <= {"raw", "stats"}
    assert featstore.verify(store_dir).ok
    assert set(Store.open(store_dir).entry_keys()) >= keys
    assert os.listdir(os.path.join(store_dir, "staging")) == []  # the failed entry's files are gone


def test_a_full_disk_while_forgetting_leaves_the_catalog_as_it_was(tmp_path, small, monkeypatch):
    store_dir = str(tmp_path / "store")
    featstore.build(small, ["raw", "stats"], store=store_dir)
    before = _contents(store_dir, small)

    def full(path, mode="r", *args, **kwargs):
        if "x" in mode or "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(storage_module, "open", full, raising=False)
    with pytest.raises(StoreError, match=r"cannot write .*/catalog/.*: No space left on device; free some space "
                                         r"and run it again: what the store holds is intact"):
        featstore.forget(small, store=store_dir, featurizers="stats")
    monkeypatch.undo()
    assert _contents(store_dir, small) == before
    assert {r.featurizer for r in featstore.forget(small, store=store_dir, featurizers="stats").rows} == {"stats"}
    assert featstore.build(small, ["raw", "stats"], store=store_dir).reused >= 4


def _entry_dir(store_dir, key) -> Path:
    return Path(store_dir, "entries", key[:2], key)


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_every_kind_of_corruption_is_detected_and_repaired(tmp_path, small):
    store_dir = str(tmp_path / "store")
    featstore.build(small, FEATURIZERS, store=store_dir)
    expected = _contents(store_dir, small)
    store = Store.open(store_dir)
    keys = sorted(store.entry_keys())
    raws = sorted(k for k in keys if store.entry_info(k).featurizer["name"] == "raw")
    def chunk(key) -> Path:
        return _entry_dir(store_dir, key) / next(iter(store.entry_info(key).chunks))

    others = [k for k in keys if k not in raws]
    damaged = {}
    _flip(chunk(others[0]))
    damaged[others[0]] = "does not match its digest"
    chunk(others[1]).write_bytes(chunk(others[1]).read_bytes()[:-7])
    damaged[others[1]] = "does not match its digest"
    missing = chunk(others[2])
    missing.unlink()
    damaged[others[2]] = f"chunk {missing.relative_to(_entry_dir(store_dir, others[2])).as_posix()} is missing"
    a, b = raws[:2]  # two entries of the same shape swap their chunks...
    ca, cb = chunk(a), chunk(b)
    data_a = ca.read_bytes()
    ca.write_bytes(cb.read_bytes())
    cb.write_bytes(data_a)
    damaged[a] = damaged[b] = "does not match its digest"
    c, d = raws[2:4]  # ...or their metadata
    za, zb = _entry_dir(store_dir, c) / "zarr.json", _entry_dir(store_dir, d) / "zarr.json"
    za_bytes = za.read_bytes()
    za.write_bytes(zb.read_bytes())
    zb.write_bytes(za_bytes)
    damaged[c], damaged[d] = f"holds the metadata of entry {d}", f"holds the metadata of entry {c}"
    e, f, g = others[3:6]  # or their metadata is torn, or edited: another codec, or chunks not recorded
    torn = _entry_dir(store_dir, e) / "zarr.json"
    torn.write_bytes(torn.read_bytes()[:-20])
    damaged[e] = "has damaged metadata (JSONDecodeError"
    for key, edit, problem in [(f, lambda m: m["codecs"].append({"name": "gzip", "configuration": {"level": 1}}),
                                "is not in the format featstore writes"),
                               (g, lambda m: m["attributes"]["featstore"]["chunks"].clear(),
                                "records chunks [], its shape implies ['c.0.0']")]:
        meta = json.loads((_entry_dir(store_dir, key) / "zarr.json").read_text())
        edit(meta)
        (_entry_dir(store_dir, key) / "zarr.json").write_text(json.dumps(meta))
        damaged[key] = problem

    report = featstore.verify(store_dir)
    assert set(report.corrupt) == set(damaged)  # 100% detected, nothing else flagged
    for key, problem in damaged.items():
        assert problem in report.corrupt[key], (key, report.corrupt[key])
    fs = featstore.open(small, store=store_dir)
    serves = {r.key: f": {fs.dataset} {r.split}/{r.layer} {r.featurizer}" for r in fs.catalog.rows}
    assert all(report.corrupt[key].endswith(serves[key]) for key in damaged), report.corrupt  # what it served
    for row in fs.catalog.rows:
        if row.key in (c, d, e, f, g):  # intact chunks, checked against the digests the catalog row recorded
            assert fs.load(row.layer, row.featurizer, row.split).numpy().tobytes() == expected[row.slot][1]
        elif row.key in damaged:
            with pytest.raises(StoreError):
                fs.load(row.layer, row.featurizer, row.split)  # never wrong numbers
    cli = _cli("verify", "--store", store_dir)
    assert cli.returncode == 1 and cli.stdout.count("corrupt ") == len(damaged)

    assert set(featstore.verify(store_dir, repair=True).repaired) == set(damaged)
    assert featstore.verify(store_dir).ok
    status = featstore.status(small, store=store_dir)
    assert {s.key for s in status.slots if s.state == "missing"} == set(damaged)
    assert featstore.build(small, FEATURIZERS, store=store_dir).computed == len(damaged)
    assert featstore.verify(store_dir, recompute=1.0).recomputed == len(keys)


def test_a_sample_of_a_small_store_checks_at_least_one_entry(sanity_dir, store_dir):
    """--sample 0.1 of 4 entries rounded to 0 and verified nothing, saying so as if all were well."""
    featstore.build("sanity", ["stats"], layers="layer_000", store=store_dir)  # 2 features + 2 labels
    assert featstore.verify(store_dir, sample=0.1).checked == 1
    assert featstore.verify(store_dir, sample=0.5).checked == 2
    report = featstore.verify(store_dir, sample=0.0, recompute=0.01)
    assert (report.checked, report.recomputed, report.ok) == (0, 1, True)


def test_a_damaged_catalog_stops_every_command_that_needs_it_and_loses_nothing(tmp_path, small):
    """A torn catalog file: the commands that read it stop with an error naming the file and the
    fix (gc above all: it would take every entry the catalog lists for garbage); verify reports it
    and --repair leaves it (it is no entry); deleting it and building again reuses every entry."""
    store_dir = str(tmp_path / "store")
    featstore.build(small, FEATURIZERS, store=store_dir)
    (catalog,) = Path(store_dir, "catalog").glob("*.json")
    catalog.write_text(catalog.read_text()[:40])
    files = {p: p.read_bytes() for p in Path(store_dir, "entries").rglob("*") if p.is_file()}
    entries = len(list(Path(store_dir, "entries").glob("*/*")))
    named = f"catalog {catalog} is not valid JSON"
    for command in (["ls"], ["status", "-d", small], ["build", "-d", small, "--no-progress"], ["gc"],
                    ["forget", "-d", small]):
        result = _cli(*command, "--store", store_dir)
        assert result.returncode == 2 and named in result.stderr and "restore it or delete it and rebuild" in \
            result.stderr and "Traceback" not in result.stderr, (command, result.stderr)
    for repair in ([], ["--repair"]):
        checked = _cli("verify", *repair, "--store", store_dir)
        assert checked.returncode == 1 and f"damaged  catalog/{catalog.name}  {named}" in checked.stdout
        assert checked.stdout.rstrip().endswith("0 corrupt, 0 mismatched, 1 damaged catalog"), checked.stdout
    assert {p: p.read_bytes() for p in Path(store_dir, "entries").rglob("*") if p.is_file()} == files
    catalog.unlink()
    rebuilt = featstore.build(small, FEATURIZERS, store=store_dir)
    assert (rebuilt.computed, rebuilt.reused) == (0, entries)
    assert featstore.verify(store_dir).ok


def _read_only(source, target, *command, cwd=None):
    """`command` run with `source` mounted read-only at `target`, in a mount namespace of its own."""
    return subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$1" "$2" && shift 2 && exec "$@"', "sh",
                           str(source), str(target), *command], capture_output=True, text=True, timeout=300,
                          check=False, cwd=cwd)


LOAD_ALL = """\
import sys
import numpy as np
import featstore
fs = featstore.open(sys.argv[1], store=sys.argv[2])
np.savez(sys.argv[3], **{"|".join(r.slot): fs.load(r.layer, r.featurizer, r.split).numpy() for r in fs.catalog.rows})
"""


def test_a_read_only_store_loads_and_says_why_it_cannot_build(tmp_path, small):
    """A store mounted read-only (shared by a team, baked into a container image) loads, with a
    warning that no lease protects it from a gc run where it can be written; commands that only
    read work; a build that has something to write says it needs a writable store."""
    store_dir, mount = tmp_path / "store", tmp_path / "mnt"
    mount.mkdir()
    if _read_only(tmp_path, mount, "true").returncode:
        pytest.skip("needs `unshare -m` and `mount --bind` (root, or a user namespace)")
    featstore.build(small, FEATURIZERS, store=str(store_dir))
    expected = {"|".join(slot): value for slot, (_, value) in _contents(str(store_dir), small).items()}
    (tmp_path / "load_all.py").write_text(LOAD_ALL)
    for command in (["ls"], ["status", "-d", small], ["verify"], ["gc", "--dry-run"]):
        done = _read_only(store_dir, mount, sys.executable, "-m", "featstore.cli", *command, "--store", str(mount))
        assert done.returncode == 0, (command, done.stderr)
    refused = _read_only(store_dir, mount, sys.executable, "-m", "featstore.cli", "build", "-d", small, "-f",
                         "svd:k=3", "--no-progress", "--store", str(mount))
    assert refused.returncode == 2 and "Read-only file system; use a store you can write to (--store, " \
        "FEATSTORE_STORE)" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    for case in ("as built", "never locked"):  # a store copied without its locks/ folder, too
        if case == "never locked":
            shutil.rmtree(store_dir / "locks")
            for command in (["gc", "--dry-run"], ["forget", "-d", small, "--dry-run"]):  # no lock file to lock
                done = _read_only(store_dir, mount, sys.executable, "-m", "featstore.cli", *command, "--store", str(mount))
                assert done.returncode == 0 and "would" in done.stdout, (command, done.stderr)
            done = _read_only(store_dir, mount, sys.executable, "-m", "featstore.cli", "gc", "--store", str(mount))
            assert done.returncode == 2 and "Read-only file system; use a store you can write to" in done.stderr, \
                done.stderr
        loaded = _read_only(store_dir, mount, sys.executable, "load_all.py", small, str(mount), f"{case[:5]}.npz",
                            cwd=tmp_path)
        assert loaded.returncode == 0, loaded.stderr
        assert f"the store {mount} cannot be written here: its entries are read without the lease" in loaded.stderr
        with np.load(tmp_path / f"{case[:5]}.npz") as values:
            assert {slot: values[slot].tobytes() for slot in values.files} == expected


def test_racing_builders_both_succeed_and_lose_nothing(tmp_path, small):
    store_dir = str(tmp_path / "store")
    procs = [subprocess.Popen([sys.executable, "-m", "featstore.cli", "build", "-d", small, *args, "--store",
                               store_dir, "--no-progress", "--device", "cpu"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
             for args in (["-f", "raw", "-f", "stats"], ["-f", "stats", "-f", "svd:k=2"], ["-f", "raw", "-f", "svd:k=2"])]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    reference = str(tmp_path / "reference")
    featstore.build(small, FEATURIZERS, store=reference, device="cpu")  # a GPU's last bits differ
    assert _contents(store_dir, small) == _contents(reference, small)  # every builder's rows are in the catalog
    assert featstore.verify(store_dir).ok


def test_gc_removes_the_unreferenced_keeps_what_readers_lease_and_recovers_stale_leases(tmp_path, small):
    store_dir = str(tmp_path / "store")
    featstore.build(small, ["raw"], store=store_dir)
    old_keys = set(Store.open(store_dir).entry_keys())
    # a reader in another process leases the current entries, then the data changes under it
    reader = subprocess.Popen([sys.executable, "-c", (
        "import featstore, sys, time\n"
        f"fs = featstore.open({small!r}, store={store_dir!r})\n"
        "print('open', flush=True)\n"
        "while True:\n"
        "    for r in fs.catalog.rows: fs.load(r.layer, r.featurizer, r.split)\n"
        "    time.sleep(0.01)\n")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "open"
    saved_layers_dataset(Path(small), layers=4, rows=30, dim=8, seed=1)  # new bytes: old entries unreferenced
    featstore.build(small, ["raw"], store=store_dir)
    for _ in range(3):
        report = featstore.gc(store_dir)
        assert report.removed == [] and report.held == len(old_keys)
    assert reader.poll() is None, reader.stderr.read()  # still reading happily
    assert featstore.gc(store_dir, dry_run=True).removed == []

    reader.send_signal(signal.SIGKILL)  # its lease is now stale
    reader.wait()
    dry = featstore.gc(store_dir, dry_run=True)
    assert {k for k, _, _ in dry.removed} == old_keys and set(Store.open(store_dir).entry_keys()) >= old_keys
    said = _cli("gc", "--dry-run", "--store", store_dir).stdout.splitlines()[-1]
    assert said.startswith(f"would remove {len(old_keys)} entries, freeing ") and said.endswith(
        "; kept 0 leased by open readers; 0 leftovers of crashed builds, 1 stale lease"), said
    report = featstore.gc(store_dir)
    assert {k for k, _, why in report.removed if why == "unreferenced"} == old_keys
    assert len(report.stale_leases) == 1 and report.freed > 0
    assert not set(Store.open(store_dir).entry_keys()) & old_keys
    assert featstore.status(small, store=store_dir).fresh and featstore.verify(store_dir).ok


def test_gc_size_budget_removes_least_recently_used_first(tmp_path, small):
    store_dir = str(tmp_path / "store")
    featstore.build(small, ["raw", "stats"], store=store_dir)
    store = Store.open(store_dir)
    fs = featstore.open(small, store=store_dir)
    fs.close()  # no lease: everything may go
    stats_keys = {r.key for r in fs.catalog.rows if r.featurizer == "stats"}
    raw_keys = {r.key for r in fs.catalog.rows if r.featurizer == "raw"}
    old = time.time() - 3600
    for key in store.entry_keys():
        os.utime(_entry_dir(store_dir, key), (old, old))
    for row in fs.catalog.rows:
        if row.featurizer == "stats":
            fs.load(row.layer, "stats")  # used just now
    raw_size = sum(store.storage.size(store.entry_path(k)) for k in raw_keys)
    total = sum(store.storage.size(store.entry_path(k)) for k in store.entry_keys())
    report = featstore.gc(store_dir, max_size=total - raw_size)
    assert {k for k, _, _ in report.removed} == raw_keys and set(store.entry_keys()) == stats_keys
    serves = {r.key: f"{fs.dataset} {r.split}/{r.layer} raw" for r in fs.catalog.rows if r.featurizer == "raw"}
    assert {k: why for k, _, why in report.removed} == {  # what each evicted entry served
        k: f"over the size budget (least recently used): {use}" for k, use in serves.items()}
    assert featstore.gc(store_dir, max_size=0, keep_days=1).removed == []  # all used within a day
    for bad in ("lots", "-1GB", "-0.5", "infGB", "nan"):  # a negative budget would remove every entry
        listing = _cli("gc", "--max-size", bad, "--store", store_dir)
        assert listing.returncode == 2 and f"'{bad}' is not a size" in listing.stderr, bad
    assert _cli("gc", "--keep", "-1", "--store", store_dir).returncode == 2
    with pytest.raises(ValueError, match="max_size >= 0"):
        featstore.gc(store_dir, max_size=-1)
    assert set(store.entry_keys()) == stats_keys


def test_forget_drops_catalog_rows_and_gc_frees_only_what_no_other_dataset_uses(tmp_path, small):
    store_dir = str(tmp_path / "store")
    other = str(tmp_path / "other")
    shutil.copytree(small, other)  # the same bytes under another name: the two share every entry
    for dataset in (small, other):
        featstore.build(dataset, ["raw", "stats"], store=store_dir, device="cpu")
    store = Store.open(store_dir)
    catalog = Path(store_dir, store.catalog_path(other))
    before, keys = catalog.read_bytes(), set(store.entry_keys())
    stats_keys = {r.key for r in store.read_catalog(small).rows if r.featurizer == "stats"}

    dry = featstore.forget(other, store_dir, featurizers="stats", dry_run=True)
    assert {r.featurizer for r in dry.rows} == {"stats"} and len(dry.rows) == 4 and dry.unreferenced == {}
    assert catalog.read_bytes() == before
    with pytest.raises(featstore.NotFoundError, match=r"no features of .* match; it holds splits train and "
                                                       r"featurizers raw, stats"):
        featstore.forget(other, store_dir, splits="test")
    with pytest.raises(featstore.NotFoundError, match=r"holds no features of 'nope' \(it holds: "):
        featstore.forget("nope", store_dir)
    assert catalog.read_bytes() == before

    featstore.forget(other, store_dir, layers=["layer_00[01]"], featurizers="stats")
    assert sorted((r.layer, r.featurizer) for r in store.read_catalog(other).rows if r.featurizer == "stats") == [
        ("layer_002", "stats"), ("layer_003", "stats")]
    assert featstore.gc(store_dir).removed == []  # `small` still uses every entry

    report = featstore.forget(small, store_dir, featurizers=["stats"])
    assert len(report.rows) == 4 and not report.catalog_removed
    assert len(report.unreferenced) == 2 and set(report.unreferenced) < stats_keys  # other keeps layers 2, 3
    assert sum(report.unreferenced.values()) == sum(store.storage.size(store.entry_path(k)) for k in report.unreferenced)
    assert {r.featurizer for r in featstore.open(small, store=store_dir).catalog.rows} == {"raw"}
    rebuilt = featstore.build(small, ["stats"], store=store_dir, device="cpu")  # before gc: catalogued, not computed
    assert rebuilt.computed == 0 and rebuilt.reused == 4
    featstore.forget(small, store_dir, featurizers=["stats"])

    whole = _cli("forget", "--dataset", other, "--store", store_dir)
    assert whole.returncode == 0 and "forgot 6 features of" in whole.stdout and "(its whole catalog)" in whole.stdout
    digests = {p.name for p in Path(store_dir, "digests").iterdir()}
    assert store.read_catalog(other) is None and digests == {f"{dataset_slug(dataset_id(small))}.json"}
    assert [c.dataset for c in store.catalogs()] == [dataset_id(small)]
    removed = {k for k, _, _ in featstore.gc(store_dir).removed}
    assert removed == stats_keys and set(store.entry_keys()) == keys - stats_keys
    assert featstore.status(small, ["raw"], store=store_dir).fresh and featstore.verify(store_dir).ok
    missing = _cli("forget", "--dataset", other, "--store", store_dir)
    assert missing.returncode == 2 and "holds no features of" in missing.stderr


def test_forgetting_a_split_forgets_its_labels_and_gc_frees_them(sanity_dir, store_dir):
    """forget --split test left the split's labels catalogued: `ls` listed them, and gc kept their
    entry for as long as the dataset had any features."""
    featstore.build("sanity", ["stats"], layers="layer_00[01]", store=store_dir)
    store = Store.open(store_dir)
    labels = {name: info.labels for name, info in store.read_catalog("sanity").splits.items()}
    with pytest.raises(featstore.NotFoundError, match=r"A split's labels go with the last of its features \(forget "
                                                       r"the split: --split NAME\)"):
        featstore.forget("sanity", store_dir, featurizers="labels")
    report = featstore.forget("sanity", store_dir, splits="test")
    assert len(report.rows) == 2 and labels["test"] in report.unreferenced and labels["train"] not in report.unreferenced
    assert set(store.read_catalog("sanity").splits) == {"train"}
    slots = {(s.split, s.featurizer): (s.state, s.reason) for s in featstore.status("sanity", store=store_dir).slots}
    assert slots[("test", "labels")] == ("missing", "not catalogued (its entry is stored)")
    assert slots[("train", "labels")] == ("fresh", "")
    assert labels["test"] in {k for k, _, _ in featstore.gc(store_dir).removed}
    assert not store.has_entry(labels["test"]) and store.has_entry(labels["train"])
    assert featstore.open("sanity", store=store_dir).labels("train").shape == (256,)
    assert featstore.build("sanity", ["stats"], layers="layer_00[01]", store=store_dir).labels == ["test"]


def test_features_outlive_their_deleted_dataset_until_forgotten(tmp_path, small):
    """A user deletes the raw data once its features are built: `open`, `ls` and `forget` still
    find them by the path it had, relative or not."""
    store_dir = str(tmp_path / "store")
    featstore.build(small, ["stats"], store=store_dir, device="cpu")
    with featstore.open(small, store=store_dir) as fs:
        expected = fs.load("layer_001", "stats").numpy()
    shutil.rmtree(small)
    with featstore.open(small, store=store_dir) as fs:  # the catalog is all it reads
        np.testing.assert_array_equal(fs.load("layer_001", "stats").numpy(), expected)
    relative = os.path.relpath(small, tmp_path)
    listed = _cli("ls", "--json", "-d", relative, "--store", store_dir, cwd=tmp_path)
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 4, listed.stderr
    status = _cli("status", "--store", store_dir, cwd=tmp_path)  # every catalogued dataset: this one is gone
    assert status.returncode == 2 and "no such file or directory" in status.stderr
    hint = f"still holds its features: if the data is gone for good, `featstore forget --dataset {os.path.realpath(small)}`"
    assert hint in status.stderr
    forgot = _cli("forget", "-d", os.path.join(".", relative), "--store", store_dir, cwd=tmp_path)
    assert forgot.returncode == 0 and "forgot 4 features of" in forgot.stdout, forgot.stderr
    assert Store.open(store_dir).catalogs() == [] and len(featstore.gc(store_dir).removed) == 4


def test_status_with_a_mistyped_glob_does_not_offer_to_forget_the_data(tmp_path, sanity_dir):
    """The hint to forget a dataset whose data is gone is for data that is gone: a preset's never
    is (it is generated anew), and a glob that matches nothing is the error to fix."""
    store_dir = str(tmp_path / "store")
    featstore.build("sanity", ["stats"], store=store_dir, device="cpu", layers="layer_000")
    mistyped = _cli("status", "-d", "sanity", "-l", "layer_9*", "--store", store_dir, cwd=tmp_path)
    assert mistyped.returncode == 2 and "--layers 'layer_9*' matches no column of 'sanity'" in mistyped.stderr
    assert "forget" not in mistyped.stderr


def test_a_killed_build_never_leaves_the_store_locked(tmp_path, small):
    store_dir = str(tmp_path / "store")
    featstore.build(small, ["raw"], store=store_dir)
    proc = subprocess.Popen([sys.executable, "-c", (
        "import featstore, os, signal\n"
        f"store = featstore.store.Store.open({store_dir!r})\n"
        "with store.storage.lock('store', shared=True):\n"
        "    print('locked', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    proc.wait()
    start = time.monotonic()
    featstore.garbage.gc(Store.open(store_dir), timeout=5)
    assert time.monotonic() - start < 5


def test_a_running_build_makes_gc_wait_with_a_clear_error(tmp_path, small):
    store_dir = str(tmp_path / "store")
    featstore.build(small, ["raw"], store=store_dir)
    store = Store.open(store_dir)
    with store.storage.lock("store", shared=True), pytest.raises(StoreError, match=r"locked by .* still running"):
        featstore.garbage.gc(store, timeout=0.2)


@pytest.mark.parametrize("name", ["../escape", "a/b", "x" * 300, ".."])
def test_names_that_could_escape_the_store_are_refused(tmp_path, name, store_dir):
    from conftest import array2d_dataset, matrices

    ds = array2d_dataset(matrices(5), name=name)
    with pytest.raises(featstore.ColumnError, match=r"layer name .* is not allowed"):
        featstore.build(ds, ["raw"], store=store_dir)
    assert not os.path.exists(store_dir)


def test_store_files_follow_the_umask_and_the_root_is_never_world_writable(tmp_path, small):
    old = os.umask(0)
    try:
        featstore.build(small, ["raw"], store=str(tmp_path / "open"))
    finally:
        os.umask(old)
    assert not stat.S_IMODE(os.stat(tmp_path / "open").st_mode) & stat.S_IWOTH
    old = os.umask(0o077)
    try:
        featstore.build(small, ["raw"], store=str(tmp_path / "private"))
    finally:
        os.umask(old)
    for folder, _, files in os.walk(tmp_path / "private"):
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) & 0o077 == 0, name
    shutil.rmtree(tmp_path / "private")


def test_no_pickle_anywhere_in_a_store(tmp_path, small):
    """Every file is JSON, an empty lock file, or a raw chunk that its entry's metadata lists."""
    store_dir = tmp_path / "store"
    featstore.build(small, FEATURIZERS, store=str(store_dir))
    featstore.open(small, store=str(store_dir)).close()
    store = Store.open(str(store_dir))
    chunks = {_entry_dir(store_dir, k) / name for k in store.entry_keys() for name in store.entry_info(k).chunks}
    for path in store_dir.rglob("*"):
        if path.is_file() and path not in chunks:
            raw = path.read_bytes()
            assert raw == b"" and path.parent.name == "locks" or isinstance(json.loads(raw), dict), path
    assert chunks and all(p.is_file() for p in chunks)
