import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import entry_info, saved_layers_dataset

import featstore
from featstore import StoreError
from featstore.manifest import SCHEMA_VERSION, Catalog, CatalogRow, SplitInfo
from featstore.store import Store, chunk_rows


def test_entry_roundtrip_on_disk(store_dir):
    store = Store.open(store_dir, create=True)
    values = np.random.default_rng(0).standard_normal((1000, 8, 8)).astype(np.float32)
    info = entry_info(values)
    assert not store.has_entry(info.key)
    assert store.write_entry(info, values) is True
    assert store.has_entry(info.key)
    np.testing.assert_array_equal(store.read_entry(info.key), values)
    stored = store.entry_info(info.key)
    assert stored == replace(info, chunks=stored.chunks) and stored.chunks.keys() == {"c.0.0.0"}
    entry_dir = os.path.join(store_dir, "entries", info.key[:2], info.key)
    meta = json.loads(Path(entry_dir, "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["attributes"]["featstore"]["key"] == info.key
    assert all(c["name"] != "zstd" for c in meta["codecs"])  # uncompressed: float data barely compresses
    assert os.listdir(os.path.join(store_dir, "staging")) == []


@pytest.mark.parametrize(("shape", "dtype"), [((800, 16), "float32"), ((3000, 64, 64), "float16"),
                                               ((5, 7), "uint16"), ((1001,), "int64"), ((0, 4), "float32")])
def test_entries_are_the_zarr_arrays_zarr_itself_would_write(tmp_path, shape, dtype):
    """We write the files ourselves (cheaper than zarr's async path); zarr must read them as its own."""
    import zarr

    store = Store.open(tmp_path / "s", create=True)
    values = (np.arange(int(np.prod(shape))) % 251).astype(dtype).reshape(shape)
    info = entry_info(values)
    store.write_entry(info, values)
    entry = tmp_path / "s" / "entries" / info.key[:2] / info.key
    rows = chunk_rows(len(values), values[:1].nbytes)
    theirs = zarr.create_array(zarr.storage.LocalStore(tmp_path / "z"), shape=shape, dtype=dtype,
                               chunks=(rows, *shape[1:]) if shape[0] else (1, *shape[1:]),
                               chunk_key_encoding={"name": "default", "separator": "."},
                               compressors=None, fill_value=0, attributes={"featstore": store.entry_info(info.key).to_json()})
    theirs[...] = values
    assert json.loads((entry / "zarr.json").read_bytes()) == json.loads((tmp_path / "z" / "zarr.json").read_bytes())
    ours = sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file())
    assert ours == sorted(p.relative_to(tmp_path / "z").as_posix() for p in (tmp_path / "z").rglob("*") if p.is_file())
    for name in ours[:-1]:  # the chunks (zarr.json sorts last): same bytes, the padded edge chunk included
        assert (entry / name).read_bytes() == (tmp_path / "z" / name).read_bytes(), name
    np.testing.assert_array_equal(zarr.open_array(zarr.storage.LocalStore(entry), mode="r")[...], values)
    np.testing.assert_array_equal(store.read_entry(info.key), values)


def test_publish_is_create_only(store_dir):
    store = Store.open(store_dir, create=True)
    values = np.ones((3, 2), np.float32)
    assert store.write_entry(entry_info(values), values) is True
    assert store.write_entry(entry_info(values), values) is False  # already there: nothing replaced
    np.testing.assert_array_equal(store.read_entry(entry_info(values).key), values)
    assert os.listdir(os.path.join(store_dir, "staging")) == []


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_corrupt_entry_is_an_error_not_wrong_numbers(store_dir, damage):
    store = Store.open(store_dir, create=True)
    values = np.arange(64, dtype=np.float32).reshape(8, 8) + 1
    info = entry_info(values)
    store.write_entry(info, values)
    chunk = os.path.join(store_dir, "entries", info.key[:2], info.key, "c.0.0")
    if damage == "flip":
        raw = bytearray(Path(chunk).read_bytes())
        raw[17] ^= 0x01
        Path(chunk).write_bytes(bytes(raw))
    else:
        os.remove(chunk)  # zarr would read the fill value
    with pytest.raises(StoreError, match=r"is corrupt"):
        store.read_entry(info.key)


def test_catalog_roundtrip_and_merge(store_dir):
    store = Store.open(store_dir, create=True)
    row = CatalogRow("train", "layer_a", "svd:k=16", "k1", (10, 16), "float32", 640, "t0")
    first = Catalog("/data/x", {"train": SplitInfo(10, "lab")}, (row,), "category_label", ("a", "b"), "t0",
                    {"mine": "feats"})
    store.write_catalog(first)
    assert store.read_catalog("/data/x") == first
    newer = Catalog("/data/x", {"test": SplitInfo(3)},
                    (CatalogRow("train", "layer_a", "svd:k=16", "k2", (10, 16), "float32", 640, "t1"),
                     CatalogRow("test", "layer_a", "raw", "k3", (3, 4), "float32", 48, "t1")), None, None, "t1",
                    {"theirs": "other.feats"})
    merged = first.merged(newer)
    assert {r.key for r in merged.rows} == {"k2", "k3"} and set(merged.splits) == {"train", "test"}
    assert merged.modules == {"mine": "feats", "theirs": "other.feats"}
    older = json.loads(first.to_bytes())
    del older["modules"]  # a catalog written before they were recorded
    assert Catalog.from_bytes(json.dumps(older).encode(), "x") == replace(first, modules={})
    assert store.catalogs() == [first]
    assert store.read_catalog("/data/other") is None


def test_unknown_schema_version_is_refused(store_dir):
    store = Store.open(store_dir, create=True)
    path = os.path.join(store_dir, store.catalog_path("d"))
    os.makedirs(os.path.dirname(path))
    Path(path).write_text(json.dumps({"schema_version": 99, "dataset": "d"}))
    with pytest.raises(StoreError, match=rf"schema_version 99; this featstore reads version {SCHEMA_VERSION}"):
        store.read_catalog("d")


@pytest.mark.parametrize(("marker", "message"), [
    ('{"format": "featstore", "schema_', r"featstore.json is damaged"),
    ('{"format": "photos", "schema_version": 1}', r"featstore.json is not a featstore marker"),
    (json.dumps({"format": "featstore", "schema_version": SCHEMA_VERSION + 1}),
     rf"written by a newer featstore \(schema {SCHEMA_VERSION + 1}; this one reads {SCHEMA_VERSION}\); upgrade"),
    (json.dumps({"format": "featstore", "schema_version": SCHEMA_VERSION - 1}),
     rf"written by an older featstore \(schema {SCHEMA_VERSION - 1}.*build into a new store"),
])
def test_a_store_whose_marker_this_featstore_cannot_read_is_refused_untouched(tmp_path, store_dir, marker, message):
    """A damaged or foreign marker, or a store of another schema: every command refuses it, naming
    the file and what to do, and writes nothing into it (a build would mix layouts)."""
    saved_layers_dataset(tmp_path / "data", layers=1, rows=4, dim=2)
    featstore.build(str(tmp_path / "data"), ["raw"], store=store_dir, device="cpu")
    Path(store_dir, "featstore.json").write_text(marker)
    before = _files(store_dir)
    for attempt in (lambda: Store.open(store_dir),
                    lambda: featstore.build(str(tmp_path / "data"), ["stats"], store=store_dir, device="cpu"),
                    lambda: featstore.open(str(tmp_path / "data"), store=store_dir)):
        with pytest.raises(StoreError, match=message):
            attempt()
    assert _files(store_dir) == before


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_open_refuses_missing_and_foreign_directories(tmp_path):
    with pytest.raises(StoreError, match=r"no featstore at"):
        Store.open(tmp_path / "absent")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match=r"exists and is not a featstore"):
        Store.open(tmp_path / "photos", create=True)
    assert os.listdir(tmp_path / "photos") == ["cat.jpg"]


def test_chunks_are_balanced_so_padding_stays_small():
    assert chunk_rows(800, 16384, 8 << 20) == 400  # two full chunks, not 512 + a padded 288
    assert chunk_rows(800, 64, 8 << 20) == 800  # small features: one chunk, no padding
    assert chunk_rows(0, 64) == 1
    for rows, row_bytes in [(1000, 16384), (10_000, 16384), (7, 3), (801, 16384)]:
        per = chunk_rows(rows, row_bytes)
        chunks = -(-rows // per)
        assert per * row_bytes <= (8 << 20) or per == 1
        assert chunks * per - rows < chunks  # padding below one row per chunk


def test_row_slices_read_only_the_chunks_they_need(store_dir, monkeypatch):
    import featstore.store as store_module

    monkeypatch.setattr(store_module, "CHUNK_BYTES", 1000)  # 10 rows of 25 float32 per chunk
    store = Store.open(store_dir, create=True)
    values = np.arange(95 * 25, dtype=np.float32).reshape(95, 25)
    info = entry_info(values)
    store.write_entry(info, values)
    assert len(store.entry_info(info.key).chunks) == 10
    for rows in (slice(0, 95), slice(3, 4), slice(9, 31), slice(90, None), slice(-7, None), slice(40, 40), slice(None)):
        np.testing.assert_array_equal(store.read_entry(info.key, rows), values[rows])
    os.remove(os.path.join(store_dir, "entries", info.key[:2], info.key, "c.0.0"))
    np.testing.assert_array_equal(store.read_entry(info.key, slice(10, 95)), values[10:])  # chunk 0 not needed
    with pytest.raises(StoreError, match=r"chunk c.0.0 is missing"):
        store.read_entry(info.key, slice(5, 15))
    with pytest.raises(ValueError, match=r"contiguous"):
        store.read_entry(info.key, slice(0, 10, 2))


def test_builders_racing_to_create_a_store_all_succeed(tmp_path):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(16)

    def create(_):
        barrier.wait()
        return Store.open(tmp_path / "s", create=True)

    with ThreadPoolExecutor(16) as pool:
        stores = list(pool.map(create, range(16)))
    assert len(stores) == 16 and json.loads((tmp_path / "s" / "featstore.json").read_text())["format"] == "featstore"
    assert sorted(os.listdir(tmp_path / "s")) == ["featstore.json"]  # no temporary files left
