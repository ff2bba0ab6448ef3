"""The same store behaviour on every backend: a local directory, fsspec's memory://, and a real
S3 server (moto's, started on 127.0.0.1 by a fixture). Object stores have no rename: entries are
written in place and published by a create-only write of their metadata."""

import errno
import socket
import uuid

import numpy as np
import pytest
from conftest import entry_info

import featstore
from featstore import StoreError, garbage
from featstore.errors import ReadOnlyStore
from featstore.store import Store


@pytest.fixture(scope="session")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["local", "memory", "s3"])
def store_url(request, tmp_path, monkeypatch):
    """A fresh store location on each backend."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "memory":
        return f"memory://featstore-tests/{uuid.uuid4().hex}"
    endpoint = request.getfixturevalue("s3_endpoint")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    import fsspec

    fsspec.filesystem("s3").invalidate_cache()
    return f"s3://featstore-{uuid.uuid4().hex[:12]}/store"


def test_entries_roundtrip_and_publish_is_create_only(store_url):
    store = Store.open(store_url, create=True)
    values = np.random.default_rng(0).standard_normal((300, 8, 8)).astype(np.float32)
    key = "cd" * 16
    assert not store.has_entry(key)
    assert store.write_entry(entry_info(values, key), values) is True
    assert store.write_entry(entry_info(values, key), values) is False  # already there: nothing replaced
    np.testing.assert_array_equal(store.read_entry(key), values)
    np.testing.assert_array_equal(store.read_entry(key, slice(17, 230)), values[17:230])
    assert store.entry_keys() == [key] and store.check_entry(key) == (None, values.nbytes)
    assert Store.open(store_url).has_entry(key)  # a second handle sees it


def test_a_local_entry_is_durable_before_it_is_published(tmp_path, monkeypatch):
    """Every file of an entry and the directory naming them are fsynced before the rename that
    publishes it, and the directory it lands in after: what a power cut cannot undo."""
    import os

    events, fsync, rename = [], os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 fsync(fd))[1])
    monkeypatch.setattr(os, "rename", lambda src, dst: (events.append(("rename", str(src), str(dst))),
                                                        rename(src, dst))[1])
    store = Store.open(str(tmp_path / "store"), create=True)
    values = np.arange(64, dtype=np.float32).reshape(8, 8)
    events.clear()
    assert store.write_entry(entry_info(values, "ab" * 16), values)
    [(at, (_, staging, final))] = [(i, e) for i, e in enumerate(events) if e[0] == "rename"]
    synced_before = {path for kind, path in events[:at] if kind == "fsync"}
    files = sorted(os.listdir(final))
    assert "zarr.json" in files and len(files) >= 2  # metadata and a chunk
    assert {f"{staging}/{name}" for name in files} | {staging} <= synced_before
    assert ("fsync", os.path.dirname(final)) in events[at + 1:]


def test_create_only_writes_hold_on_a_filesystem_whose_pipe_file_ignores_mode():
    """fsspec before 2024.12 took pipe_file(..., mode="create") and overwrote the file: a backend
    whose pipe_file has no `mode` gets the exists-then-write fallback, never a silent overwrite."""
    from fsspec.implementations.memory import MemoryFileSystem

    from featstore.fsspec_storage import FsspecStorage

    class OldMemory(MemoryFileSystem):
        def pipe_file(self, path, value, **kwargs):  # the old signature: mode= lands in kwargs, unused
            with self.open(path, "wb") as f:
                f.write(value)

    storage = FsspecStorage(f"memory://featstore-old-{uuid.uuid4().hex[:8]}")
    storage.fs = OldMemory()
    assert storage.write_new("a/zarr.json", b"first") is True
    assert storage.write_new("a/zarr.json", b"second") is False
    assert storage.read_bytes("a/zarr.json") == b"first"


def test_damaged_chunks_are_detected(store_url):
    store = Store.open(store_url, create=True)
    values = np.arange(64, dtype=np.float32).reshape(8, 8)
    key = "ef" * 16
    store.write_entry(entry_info(values, key), values)
    chunk = f"{store.entry_path(key)}/c.0.0"
    raw = bytearray(store.storage.read_bytes(chunk))
    raw[5] ^= 0x40
    store.storage.write_bytes(chunk, bytes(raw))
    with pytest.raises(StoreError, match=r"is corrupt"):
        store.read_entry(key)
    assert "does not match its digest" in store.check_entry(key)[0]


def test_build_open_status_verify_gc(store_url, sanity_dir):
    report = featstore.build("sanity", ["stats", "svd:k=4"], layers=["layer_00[0-2]"], store=store_url)
    assert report.computed == 12
    assert featstore.build("sanity", ["stats", "svd:k=4"], layers=["layer_00[0-2]"], store=store_url).computed == 0
    with featstore.open("sanity", store=store_url) as fs:
        assert fs.load("layer_001", "svd:k=4").shape == (256, 4)
        assert fs.labels("test").shape == (64,)
    assert featstore.status("sanity", layers=["layer_00[0-2]"], store=store_url).fresh
    assert featstore.verify(store_url).ok and featstore.verify(store_url).checked == 14  # + 2 label entries
    store = Store.open(store_url)
    orphan = np.ones((3, 2), np.float32)  # an entry no catalog references ...
    store.write_entry(entry_info(orphan, "ab" * 16), orphan)
    store.storage.put(f"{store.entry_path('99' * 16)}/c.0.0", b"half")  # ... and a crashed writer's chunk
    assert "99" * 16 not in store.entry_keys() and store.entry_keys(published=False) == ["99" * 16]
    assert featstore.verify(store_url).ok  # an unpublished leftover is no corrupt entry
    report = featstore.gc(store_url)
    assert {k for k, _, _ in report.removed} == {"ab" * 16} and not store.has_entry("ab" * 16)
    assert report.leftovers == [store.entry_path("99" * 16)] and store.entry_keys(published=False) == []
    assert featstore.verify(store_url).ok and featstore.status("sanity", layers=["layer_00[0-2]"], store=store_url).fresh
    svd = {r.key for r in store.read_catalog("sanity").rows if r.featurizer == "svd:k=4"}
    assert set(featstore.forget("sanity", store_url, featurizers="svd").unreferenced) == svd
    assert {k for k, _, _ in featstore.gc(store_url).removed} == svd
    assert featstore.forget("sanity", store_url).catalog_removed and store.catalogs() == []
    assert len(featstore.gc(store_url).removed) == 8 and store.entry_keys() == []  # 6 stats, 2 labels


def test_a_store_with_read_only_credentials_loads_and_refuses_to_build(store_url, sanity_dir, monkeypatch, caplog):
    """An object store this process may read, not write (an S3 policy without PutObject): how
    fsspec reports it (PermissionError, EACCES) on every write, lock markers and leases included."""
    if "://" not in store_url:
        pytest.skip("a local store: test_safety mounts one read-only")
    from featstore.fsspec_storage import FsspecStorage
    from featstore.storage import io_errors

    featstore.build("sanity", ["stats"], layers=["layer_000"], store=store_url)

    def denied(self, path, *data):
        with io_errors(f"{self.url}/{path}"):
            raise PermissionError(errno.EACCES, "Access Denied")

    for write in ("write_bytes", "write_new", "put", "delete"):
        monkeypatch.setattr(FsspecStorage, write, denied)
    with featstore.open("sanity", store=store_url) as fs:
        assert fs.load("layer_000", "stats").shape == (256, 4)
    assert f"the store {store_url} cannot be written here" in caplog.text
    with pytest.raises(ReadOnlyStore, match=r"/locks/store/shared-\w+: Access Denied; use a store you can write to"):
        featstore.build("sanity", ["svd:k=2"], layers=["layer_000"], store=store_url)
    # dry runs need no lock (they change nothing); the real thing says why it cannot
    assert featstore.gc(store_url, dry_run=True).removed == []
    assert len(featstore.forget("sanity", store_url, dry_run=True).rows) == 2
    with pytest.raises(ReadOnlyStore, match=r"/locks/store/exclusive: Access Denied; use a store you can write to"):
        featstore.gc(store_url)
    with pytest.raises(ReadOnlyStore, match=r"/locks/catalog-sanity-\w+/exclusive: Access Denied"):
        featstore.forget("sanity", store_url)


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_datasets_on_object_storage_give_the_same_entries(layout, sanity_dir, tmp_path):
    """--dataset memory://... (any fsspec URL): same bytes, so the same keys as the local copy."""
    import datasets
    import fsspec

    url = f"memory://featstore-data/{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    if layout == "save_to_disk":
        fs.put(str(sanity_dir), url.removeprefix("memory://"), recursive=True)
        local = "sanity"
    else:
        train = datasets.load_from_disk(str(sanity_dir))["train"]
        train.to_parquet(str(tmp_path / "train.parquet"))
        fs.put(str(tmp_path / "train.parquet"), url.removeprefix("memory://") + "/train.parquet")
        local = str(tmp_path / "train.parquet")
    store = str(tmp_path / "store")
    remote = featstore.build(url, ["stats"], layers=["layer_00[12]"], store=store)
    assert remote.computed > 0 and remote.dataset == url
    from_disk = featstore.build(local, ["stats"], layers=["layer_00[12]"], store=store)
    assert from_disk.computed == 0 and from_disk.reused == remote.computed  # identical bytes, identical keys
    assert featstore.status(url, ["stats"], layers=["layer_00[12]"], store=store).fresh


def test_gc_and_builds_exclude_each_other(store_url):
    """The store lock on every backend: object stores through marker objects (FsspecStorage.lock)."""
    store = Store.open(store_url, create=True)
    with (store.storage.lock("store", shared=True), store.storage.lock("store", shared=True),  # builds share it
          pytest.raises(StoreError, match=r"locked by builds still running")):
        garbage.gc(store, timeout=0.3)
    with (store.storage.lock("store", shared=False), pytest.raises(StoreError, match=r"locked by a gc still running"),
          store.storage.lock("store", shared=True, timeout=0.3)):
        pass
    with store.storage.lock("store", shared=True):  # all released: both go ahead
        pass
    assert garbage.gc(store, timeout=0.3).removed == []


def _s3_env(store_url):
    if not store_url.startswith("s3://"):
        pytest.skip("needs a store that other processes reach: covered for local dirs in test_safety")


def test_a_killed_holder_never_leaves_an_object_store_locked(store_url):
    import subprocess
    import sys

    _s3_env(store_url)
    Store.open(store_url, create=True)
    proc = subprocess.run([sys.executable, "-c", (
        "import featstore, os, signal\n"
        f"store = featstore.store.Store.open({store_url!r})\n"
        "with store.storage.lock('store', shared=False):\n"
        "    print('locked', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")], capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == "locked" and proc.returncode == -9
    store = Store.open(store_url)
    assert store.storage.list("locks/store") == ["exclusive"]  # the dead holder's marker ...
    with store.storage.lock("store", shared=True, timeout=5):  # ... is stale: removed, not waited for
        pass
    assert store.storage.list("locks/store") == []


def test_gc_running_during_a_build_on_s3_removes_nothing_it_needs(store_url, sanity_dir):
    """A real `featstore build` process against the S3 server while this one runs gc over and
    over: entries published but not yet catalogued must survive (the lock makes gc wait)."""
    import os
    import subprocess
    import sys

    _s3_env(store_url)
    Store.open(store_url, create=True)
    build = subprocess.Popen([sys.executable, "-m", "featstore.cli", "build", "--dataset", "sanity", "-f", "stats",
                              "-f", "svd:k=2", "--store", store_url, "--no-progress"], env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = 0
    while build.poll() is None:
        featstore.gc(store_url)
        runs += 1
    assert build.returncode == 0, build.stderr
    assert runs >= 2
    featstore.gc(store_url)
    assert featstore.status("sanity", ["stats", "svd:k=2"], store=store_url).fresh
    assert featstore.verify(store_url).ok
    with featstore.open("sanity", store=store_url) as fs:
        assert fs.load_many(fs.layers, "svd:k=2", "test", stack=True).shape == (8, 64, 2)


def test_sigkill_at_every_storage_step_on_s3_leaves_a_clean_store_that_resumes(store_url, tmp_path):
    """The crash test of tests/test_safety.py against the S3 server: a real `featstore build`
    process SIGKILLed at each storage step (FEATSTORE_CRASH_AT) leaves no visible partial entry,
    verifies clean, resumes to the same bytes, and gc takes its unpublished leftovers."""
    import signal

    from conftest import crash_builds, saved_layers_dataset

    _s3_env(store_url)
    data = str(tmp_path / "data")
    saved_layers_dataset(data, layers=2, rows=30, dim=8)
    specs = ["stats", "svd:k=2"]

    def contents(location):
        with featstore.open(data, store=location) as fs:
            return {r.slot: (r.key, fs.load(r.layer, r.featurizer, r.split).numpy().tobytes()) for r in fs.catalog.rows}

    reference = str(tmp_path / "reference")
    featstore.build(data, specs, store=reference, device="cpu")
    expected = contents(reference)

    def store(point: int) -> str:
        return f"{store_url}-{point}"

    codes = crash_builds(["build", "-d", data, "-f", specs[0], "-f", specs[1], "--no-progress", "--device", "cpu"],
                         range(1, 19), store)  # 13 steps in all today
    assert all(rc in (0, -signal.SIGKILL) for rc in codes.values())
    killed = [(point, store(point)) for point, rc in sorted(codes.items()) if rc == -signal.SIGKILL]
    assert len(killed) >= 12 and codes[18] == 0, codes  # every step, then past the end
    for point, location in killed:
        try:
            store = Store.open(location)
        except StoreError:
            continue  # killed before the store existed
        assert featstore.verify(location).ok, point
        assert all(store.check_entry(k)[0] is None for k in store.entry_keys()), point  # no partial entry visible
        featstore.build(data, specs, store=location, device="cpu")  # resume
        assert contents(location) == expected, point
        assert featstore.gc(location).removed == [] and store.entry_keys(published=False) == [], point


def test_racing_builders_on_s3_both_succeed_and_lose_nothing(store_url, tmp_path):
    """Three `featstore build` processes with overlapping featurizers against one S3 store: every
    builder's rows end up in the catalog (merged under the catalog lock's markers), none lost."""
    import subprocess
    import sys

    from conftest import saved_layers_dataset

    _s3_env(store_url)
    data = str(tmp_path / "data")
    saved_layers_dataset(data, layers=2, rows=30, dim=8)
    runs = (["-f", "raw", "-f", "stats"], ["-f", "stats", "-f", "svd:k=2"], ["-f", "raw", "-f", "svd:k=2"])
    procs = [subprocess.Popen([sys.executable, "-m", "featstore.cli", "build", "-d", data, *args, "--store", store_url,
                               "--no-progress", "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for args in runs]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with featstore.open(data, store=store_url) as fs:
        assert sorted(fs.featurizers) == ["raw", "stats", "svd:k=2"] and len(fs.catalog.rows) == 6
        loaded = {r.slot: fs.load(r.layer, r.featurizer, r.split).numpy() for r in fs.catalog.rows}
    reference = str(tmp_path / "reference")
    featstore.build(data, ["raw", "stats", "svd:k=2"], store=reference, device="cpu")
    with featstore.open(data, store=reference) as fs:
        for row in fs.catalog.rows:
            np.testing.assert_array_equal(loaded[row.slot], fs.load(row.layer, row.featurizer, row.split).numpy())
    assert featstore.verify(store_url).ok and Store.open(store_url).storage.list("locks/store") == []


def test_locks_see_markers_written_by_other_processes_despite_cached_listings(store_url):
    """s3fs caches directory listings per process: gc must still see a build's marker written after
    it last listed the lock markers (here: the holder releases, then takes the lock again)."""
    import subprocess
    import sys

    _s3_env(store_url)
    store = Store.open(store_url, create=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import featstore, sys\n"
        f"store = featstore.store.Store.open({store_url!r})\n"
        "for turn in '12':\n"
        "    with store.storage.lock('store', shared=True):\n"
        "        print(turn, flush=True)\n"
        "        sys.stdin.readline()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "1"
        first = store.storage.list("locks/store")  # a listing this process could keep in a cache
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "2"
        assert store.storage.list("locks/store") != first  # the new marker, not the cached listing
        with pytest.raises(StoreError, match=r"locked by builds still running"):
            garbage.gc(store, timeout=0.5)
    finally:
        holder.communicate("\n", timeout=30)
    assert garbage.gc(store, timeout=5).removed == []
