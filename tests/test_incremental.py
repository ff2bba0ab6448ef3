"""Exact invalidation: what changed is rebuilt, nothing else; `status` and lockfiles say so."""

import json
import os
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch

import featstore
from featstore import presets
from featstore.featurizers import register
from featstore.split import Split
from featstore.store import Store

ROWS, DIM = 40, 4


def save_layers(path, layers: dict[str, np.ndarray], num_shards: int | None = None) -> str:
    """A save_to_disk dataset with one Array2D float32 column per entry of `layers`."""
    features = datasets.Features({name: datasets.Array2D((DIM, DIM), "float32") for name in layers})
    schema = features.arrow_schema
    columns = [presets.matrices_to_arrow(values, schema.field(i).type) for i, values in enumerate(layers.values())]
    datasets.Dataset(pa.Table.from_arrays(columns, schema=schema)).save_to_disk(str(path), num_shards=num_shards)
    return str(path)


def patch_in_place(path, row_values: np.ndarray, new_first: float) -> None:
    """Overwrite the first value of the row `row_values` in whichever data file of `path` holds
    it, in place: same file, same size, new bytes."""
    for data_file in sorted(path.glob("data-*.arrow")):
        raw = data_file.read_bytes()
        at = raw.find(row_values.tobytes())
        if at >= 0:
            with open(data_file, "r+b") as f:
                f.seek(at)
                f.write(np.float32(new_first).tobytes())
            return
    raise AssertionError("row not found")


def layers_of(n: int, rows: int = ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer_{i}": rng.standard_normal((rows, DIM, DIM), dtype=np.float32) for i in range(n)}


def computed(report) -> set[tuple[str, str]]:
    return {(e.layer, e.featurizer) for e in report.entries if e.status == "computed"}


def test_one_changed_layer_rebuilds_only_its_entries(tmp_path, store_dir):
    data = layers_of(3)
    path = save_layers(tmp_path / "d", data)
    assert featstore.build(path, ["raw", "stats"], store=store_dir).computed == 6
    assert featstore.status(path, store=store_dir).fresh

    data["layer_1"][7, 0, 0] += 1.0
    save_layers(tmp_path / "d", data)
    report = featstore.status(path, store=store_dir)
    stale = {(s.layer, s.featurizer): s.reason for s in report.slots if s.state != "fresh"}
    assert stale == {("layer_1", "raw"): "input bytes changed", ("layer_1", "stats"): "input bytes changed"}
    assert report.work() == {"entries": 2, "columns": 1, "input_bytes": ROWS * DIM * DIM * 4, "reused": 0,
                             "dropped": 0}

    rebuilt = featstore.build(path, ["raw", "stats"], store=store_dir)
    assert computed(rebuilt) == {("layer_1", "raw"), ("layer_1", "stats")}
    assert rebuilt.reasons == {"input bytes changed": 2}
    assert featstore.status(path, store=store_dir).fresh
    np.testing.assert_array_equal(featstore.open(path, store=store_dir).load("layer_1", "raw").numpy(), data["layer_1"])


def test_a_write_in_place_that_keeps_the_mtime_is_not_vouched_for(tmp_path, store_dir):
    """`cp -p`, `rsync --inplace -t` or os.utime leave a rewritten file with its old path, inode,
    size and mtime: the digest cache vouched for it, and status called stale features fresh."""
    data = layers_of(2)
    path = save_layers(tmp_path / "d", data)
    featstore.build(path, ["stats"], store=store_dir)
    (data_file,) = (tmp_path / "d").glob("data-*.arrow")
    before = os.stat(data_file)
    patch_in_place(tmp_path / "d", data["layer_1"][3].copy(), 7.0)
    os.utime(data_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(data_file)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    report = featstore.status(path, store=store_dir)
    assert [(s.layer, s.reason) for s in report.slots if s.state != "fresh"] == [("layer_1", "input bytes changed")]


def test_status_counts_entries_the_store_holds_as_reused_not_computed(tmp_path, store_dir):
    from click.testing import CliRunner

    from featstore.cli import main

    data = layers_of(2)
    original = data["layer_1"].copy()
    path = save_layers(tmp_path / "d", data)
    featstore.build(path, ["stats"], store=store_dir)
    data["layer_1"][0, 0, 0] += 1.0
    featstore.build(save_layers(tmp_path / "d", data), ["stats"], store=store_dir)  # the old entry stays until gc
    data["layer_1"] = original
    save_layers(tmp_path / "d", data)  # the change reverted
    report = featstore.status(path, store=store_dir)
    [slot] = [s for s in report.slots if s.state != "fresh"]
    assert (slot.layer, slot.reason, slot.stored) == ("layer_1", "input bytes changed", True)
    assert report.work() == {"entries": 0, "columns": 0, "input_bytes": 0, "reused": 1, "dropped": 0}
    shown = CliRunner().invoke(main, ["status", "-d", path, "--store", store_dir])
    assert shown.exit_code == 1
    assert shown.output.splitlines()[-2].endswith(": 1 fresh, 1 stale, 0 missing; a build would reuse 1 entry the store holds")
    assert shown.output.splitlines()[-1] == f"  to update: featstore build --dataset {path} --featurizer stats --store {store_dir}"
    assert featstore.build(path, ["stats"], store=store_dir).computed == 0
    assert featstore.status(path, store=store_dir).fresh


def test_status_stops_with_the_builds_error_where_a_featurizer_cannot_take_a_column(tmp_path, store_dir):
    """Status says what a build would do: for a column a build would compute a featurizer of and
    cannot (`svd` of a vector column), that is stop with the build's error, not count it as work."""
    from click.testing import CliRunner

    from featstore.cli import main

    rng = np.random.default_rng(0)
    data = {"m": rng.standard_normal((ROWS, DIM, DIM), dtype=np.float32), "v": rng.standard_normal((ROWS, DIM))}
    path = str(tmp_path / "d")
    datasets.Dataset.from_dict(data).save_to_disk(path)
    with pytest.raises(featstore.FeatstoreError) as built:
        featstore.build(path, ["svd"], store=store_dir)
    featstore.build(path, ["svd"], layers="m", store=store_dir)
    with pytest.raises(type(built.value)) as checked:
        featstore.status(path, store=store_dir)
    assert str(checked.value) == str(built.value)
    assert "featurizer svd cannot use column 'v' (split train)" in str(checked.value), checked.value
    shown = CliRunner().invoke(main, ["status", "-d", path, "--store", store_dir])
    assert shown.exit_code == 2 and "cannot use column 'v'" in shown.output
    assert featstore.status(path, layers="m", store=store_dir).fresh


def test_status_and_lock_stop_with_the_builds_error_at_a_column_name_the_store_cannot_record(tmp_path, store_dir):
    """A build refuses a column named with a '/' (adapters' module paths may have one); status
    must not count it as work a build would do, nor lock record it."""
    from click.testing import CliRunner

    from featstore.cli import main

    rng = np.random.default_rng(0)
    path = str(tmp_path / "d")
    datasets.Dataset.from_dict({"m": rng.standard_normal((ROWS, DIM, DIM), dtype=np.float32),
                                "q_proj/lora_A": rng.standard_normal((ROWS, DIM, DIM), dtype=np.float32)}
                               ).save_to_disk(path)
    with pytest.raises(featstore.ColumnError) as built:
        featstore.build(path, ["stats"], store=store_dir)
    assert "layer name 'q_proj/lora_A' is not allowed" in str(built.value)
    assert str(built.value).endswith("rename the column or split (or choose the other layers with --layers GLOB)")
    featstore.build(path, ["stats"], layers="m", store=store_dir)
    for command in (featstore.status, featstore.lock):
        with pytest.raises(featstore.ColumnError) as checked:
            command(path, ["stats"], store=store_dir)
        assert str(checked.value) == str(built.value)
    shown = CliRunner().invoke(main, ["status", "-d", path, "-f", "stats", "--store", store_dir])
    assert shown.exit_code == 2 and "'q_proj/lora_A' is not allowed" in shown.output, shown.output
    assert featstore.status(path, ["stats"], layers="m", store=store_dir).fresh


def test_status_reads_no_column_the_digest_cache_vouches_for(tmp_path, store_dir, monkeypatch):
    from featstore import split as split_module

    data = layers_of(2)
    path = save_layers(tmp_path / "d", data)
    featstore.build(path, ["stats"], store=store_dir)
    read = []
    real = split_module.column_parts
    monkeypatch.setattr(split_module, "column_parts", lambda ds, name: read.append(name) or real(ds, name))
    report = featstore.status(path, ["stats", "norms"], store=store_dir)
    assert read == []  # not even the list offsets (seconds for 1k from a cold page cache)
    assert report.work() == {"entries": 2, "columns": 2, "input_bytes": 2 * data["layer_0"].nbytes, "reused": 0,
                             "dropped": 0}
    data["layer_1"][0, 0, 0] += 1.0
    save_layers(tmp_path / "d", data)
    assert [(s.layer, s.reason) for s in featstore.status(path, store=store_dir).slots if s.state != "fresh"] == [
        ("layer_1", "input bytes changed")]
    assert sorted(set(read)) == ["layer_0", "layer_1"]  # the files changed: hashed again


def test_a_rewritten_file_of_a_split_is_hashed_not_the_split(tmp_path, store_dir, monkeypatch):
    from featstore import builder, digest_cache

    data = layers_of(3)
    path = save_layers(tmp_path / "d", data, num_shards=4)  # 10 rows per file
    assert featstore.build(path, ["raw"], store=store_dir).computed == 3
    original = data["layer_1"][17].copy()
    data["layer_1"][17, 0, 0] += 1.0
    patch_in_place(tmp_path / "d", original, data["layer_1"][17, 0, 0])  # rows 10-19: file 1
    per_file, whole = [], []
    real_file, real_whole = Split.file_digest, builder.column_digests
    monkeypatch.setattr(Split, "file_digest", lambda self, i, name: per_file.append((i, name))
                        or real_file(self, i, name))
    for hashing in (builder, digest_cache):  # a build's, status's
        monkeypatch.setattr(hashing, "column_digests", lambda *a: whole.append(a[2]) or real_whole(*a))

    stale = [(s.layer, s.reason) for s in featstore.status(path, ["raw"], store=store_dir).slots if s.state != "fresh"]
    assert stale == [("layer_1", "input bytes changed")]
    assert sorted(per_file) == [(1, f"layer_{i}") for i in range(3)]  # the changed file's rows of each column
    assert whole == [(ROWS, DIM, DIM)]  # one column hashed whole: the changed one
    per_file.clear()
    whole.clear()
    rebuilt = featstore.build(path, ["raw"], store=store_dir)
    assert computed(rebuilt) == {("layer_1", "raw")} and rebuilt.reasons == {"input bytes changed": 1}
    assert sorted(per_file) == [(1, f"layer_{i}") for i in range(3)]
    assert whole == [(ROWS, DIM, DIM)]
    loaded = featstore.open(path, store=store_dir)
    for name, values in data.items():
        np.testing.assert_array_equal(loaded.load(name, "raw").numpy(), values)

    # Back to the old bytes: the file's rows match the old column's no longer (they were taken
    # again when it was hashed), so it is hashed again, and the old entry serves.
    monkeypatch.undo()
    patch_in_place(tmp_path / "d", data["layer_1"][17].copy(), original[0, 0])
    data["layer_1"][17] = original
    reverted = featstore.build(path, ["raw"], store=store_dir)
    assert (reverted.computed, reverted.reused) == (0, 3)
    np.testing.assert_array_equal(featstore.open(path, store=store_dir).load("layer_1", "raw").numpy(), data["layer_1"])
    assert featstore.status(path, ["raw"], store=store_dir).fresh

    # Saved again in other files, the same bytes keep their digests: nothing to compute.
    save_layers(tmp_path / "d", data, num_shards=2)
    assert featstore.build(path, ["raw"], store=store_dir).computed == 0


def test_a_split_mostly_rewritten_is_hashed_whole(tmp_path, store_dir, monkeypatch):
    data = layers_of(2)
    path = save_layers(tmp_path / "d", data, num_shards=4)
    featstore.build(path, ["raw"], store=store_dir)
    for row in (5, 15, 25):  # files 0, 1 and 2: three quarters of the rows
        patch_in_place(tmp_path / "d", data["layer_0"][row].copy(), 9.0 + row)
        data["layer_0"][row, 0, 0] = 9.0 + row
    per_file = []
    real = Split.file_digest
    monkeypatch.setattr(Split, "file_digest", lambda self, i, name: per_file.append(i) or real(self, i, name))
    assert computed(featstore.build(path, ["raw"], store=store_dir)) == {("layer_0", "raw")}
    assert per_file == []  # comparing would hash layer_0's changed rows twice, for a quarter saved
    np.testing.assert_array_equal(featstore.open(path, store=store_dir).load("layer_0", "raw").numpy(), data["layer_0"])


def test_a_rewritten_parquet_file_is_read_not_the_split(tmp_path, store_dir, monkeypatch):
    data = layers_of(2, rows=30)
    (tmp_path / "pq").mkdir()

    def write(i: int) -> None:  # file i: rows 10i to 10i + 9
        rows = datasets.Dataset.from_dict({name: values[10 * i : 10 * i + 10] for name, values in data.items()})
        rows.to_parquet(str(tmp_path / "pq" / f"part-{i}.parquet"))

    for i in range(3):
        write(i)
    path = str(tmp_path / "pq")
    assert featstore.build(path, ["raw"], store=store_dir).computed == 2
    data["layer_0"][25, 1, 1] += 1.0
    write(2)
    read = []
    real = Split._parquet_batches
    monkeypatch.setattr(Split, "_parquet_batches", lambda self, name, files=None: read.append((name, files))
                        or real(self, name, files))
    rebuilt = featstore.build(path, ["raw"], store=store_dir)
    assert computed(rebuilt) == {("layer_0", "raw")}
    # each column of the rewritten file alone, then all of the column that differs in it
    assert sorted(read, key=str) == sorted([("layer_0", [f"{path}/part-2.parquet"]),
                                            ("layer_1", [f"{path}/part-2.parquet"])] + [("layer_0", None)] * 2, key=str)
    np.testing.assert_array_equal(featstore.open(path, store=store_dir).load("layer_0", "raw").numpy(), data["layer_0"])


def test_an_entry_gc_removed_is_reported_and_rebuilt(tmp_path, store_dir):
    path = save_layers(tmp_path / "d", layers_of(2))
    featstore.build(path, ["stats"], store=store_dir)
    featstore.gc(store_dir, max_size=0)  # evicts even catalogued entries
    assert {(s.layer, s.state, s.reason) for s in featstore.status(path, store=store_dir).slots} == {
        (f"layer_{i}", "missing", "entry removed (by gc or verify --repair)") for i in range(2)}
    assert featstore.build(path, ["stats"], store=store_dir).reasons == {"removed from the store": 2}
    assert featstore.status(path, store=store_dir).fresh


def test_status_before_the_first_build_counts_the_labels_it_will_store(tmp_path, store_dir):
    """Labels slots appeared only once a catalog existed: 2 missing became 4 fresh after the build."""
    featstore.build(save_layers(tmp_path / "other", layers_of(1, seed=1)), ["stats"], store=store_dir)  # a store
    path = str(tmp_path / "d")
    datasets.Dataset.from_dict({"w": layers_of(1)["layer_0"], "category_label": [0, 1] * (ROWS // 2)}).save_to_disk(path)
    before = featstore.status(path, ["stats"], store=store_dir)
    assert sorted((s.layer, s.featurizer, s.state, s.reason) for s in before.slots) == [
        ("category_label", "labels", "missing", "not built"), ("w", "stats", "missing", "not built")]
    featstore.build(path, ["stats"], store=store_dir)
    after = featstore.status(path, store=store_dir)
    assert len(after.slots) == len(before.slots) and after.fresh


def test_labels_gc_removed_are_reported_missing_not_fresh_and_rebuilt(tmp_path, store_dir):
    """gc --max-size may evict a split's labels like any entry: status called them fresh, and
    require_fresh let a training script open a store whose labels() then failed."""
    path = str(tmp_path / "d")
    datasets.Dataset.from_dict({"w": layers_of(1)["layer_0"], "category_label": [0, 1] * (ROWS // 2)}).save_to_disk(path)
    featstore.build(path, ["stats"], store=store_dir)
    with featstore.open(path, store=store_dir) as fs:
        labels, key = fs.labels().tolist(), fs.catalog.splits["train"].labels
    Store.open(store_dir).delete_entry(key)  # as gc --max-size does
    (slot,) = [s for s in featstore.status(path, store=store_dir).slots if s.featurizer == "labels"]
    assert (slot.split, slot.layer, slot.state, slot.reason, slot.stored) == (
        "train", "category_label", "missing", "entry removed (by gc or verify --repair)", False)
    with pytest.raises(featstore.StaleError, match=r"train/category_label/labels: missing, entry removed.*; rebuild "
                                                   r"them: featstore build --dataset .* --featurizer stats --store "):
        featstore.open(path, store=store_dir, require_fresh=True)
    featstore.build(path, ["stats"], store=store_dir)
    assert featstore.status(path, store=store_dir).fresh
    assert featstore.open(path, store=store_dir).labels().tolist() == labels


def test_an_added_layer_builds_only_itself(tmp_path, store_dir):
    data = layers_of(3)
    path = save_layers(tmp_path / "d", data)
    featstore.build(path, ["stats"], store=store_dir)
    data["layer_new"] = np.ones((ROWS, DIM, DIM), np.float32)
    save_layers(tmp_path / "d", data)
    slots = featstore.status(path, store=store_dir).slots
    assert [(s.layer, s.state, s.reason) for s in slots if s.state != "fresh"] == [("layer_new", "missing", "not built")]
    assert computed(featstore.build(path, ["stats"], store=store_dir)) == {("layer_new", "stats")}


def _register_variant(version, default_k, body):
    def variant(x, k: int = default_k):
        return body(x)[:, :k] if k else body(x)
    # The code identity hashes the source of `variant` and `body` (a project-local helper).
    return register(variant, "test_variant", version=version)


def _first_rows(x):
    return x.reshape(len(x), -1)


def _first_rows_doubled(x):
    return 2 * x.reshape(len(x), -1)


@pytest.mark.parametrize(("before", "after", "reason"), [
    (("1", 2, _first_rows), ("2", 2, _first_rows), "version changed"),
    (("1", 2, _first_rows), ("1", 3, _first_rows), "params changed"),
    ((None, 2, _first_rows), (None, 2, _first_rows_doubled), "featurizer code changed (body)"),  # its helper
])
def test_status_names_why_a_featurizer_change_made_entries_stale(tmp_path, store_dir, before, after, reason):
    path = save_layers(tmp_path / "d", layers_of(2))
    _register_variant(*before)
    featstore.build(path, ["test_variant", "stats"], store=store_dir)
    _register_variant(*after)
    slots = featstore.status(path, store=store_dir).slots
    assert {(s.featurizer, s.state, s.reason) for s in slots} == {("test_variant", "stale", reason),
                                                                 ("stats", "fresh", "")}
    report = featstore.build(path, ["test_variant", "stats"], store=store_dir)
    assert report.reasons == {reason: 2} and report.reused == 2


SCALE = 1.0


@featstore.featurizer("test_scaled")
def _scaled(x):
    return x.reshape(len(x), -1)[:, :2] * SCALE


def test_a_constant_set_after_import_makes_new_entries(tmp_path, store_dir, monkeypatch):
    """A script that sets a module constant from its arguments after defining its featurizer gets
    features computed with the constant's value, never the entries of another value."""
    data = layers_of(1)
    path = save_layers(tmp_path / "d", data)
    featstore.build(path, ["test_scaled"], store=store_dir)
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 3.0)
    assert [s.reason for s in featstore.status(path, ["test_scaled"], store=store_dir).slots] == [
        "featurizer code changed (SCALE)"]
    assert featstore.build(path, ["test_scaled"], store=store_dir).reasons == {"featurizer code changed (SCALE)": 1}
    np.testing.assert_array_equal(featstore.open(path, store=store_dir).load("layer_0", "test_scaled").numpy(),
                                  data["layer_0"].reshape(ROWS, -1)[:, :2] * 3.0)


_CALLS = []


@featstore.featurizer("test_counting", version="1")
def _counting(x):
    _CALLS.append(len(x))
    return x.reshape(len(x), -1)[:, :3] * 2


def test_appended_rows_are_the_only_ones_computed(tmp_path, store_dir):
    data = layers_of(2, rows=100)
    path = save_layers(tmp_path / "d", data)
    featstore.build(path, ["test_counting", "raw"], store=store_dir)
    more = {name: np.concatenate([v, np.full((10, DIM, DIM), 3.0, np.float32)]) for name, v in data.items()}
    save_layers(tmp_path / "d", more)
    status = featstore.status(path, ["test_counting", "raw"], store=store_dir)  # says what the build will do
    assert {(s.layer, s.featurizer, s.state, s.reason) for s in status.slots} == {
        (name, f, "stale", "10 rows appended to 100") for name in data for f in ("test_counting", "raw")}
    assert status.work() == {"entries": 4, "columns": 2, "input_bytes": 2 * 10 * DIM * DIM * 4, "reused": 0,
                             "dropped": 0}
    _CALLS.clear()
    report = featstore.build(path, ["test_counting", "raw"], store=store_dir)
    assert report.reasons == {"10 rows appended to 100": 4}
    assert _CALLS == [10, 10]  # one call per layer, on the new rows only
    fs = featstore.open(path, store=store_dir)
    cold = featstore.build(path, ["test_counting"], store=f"{store_dir}-cold")
    assert cold.computed == 2
    for name, values in more.items():
        torch.testing.assert_close(fs.load(name, "test_counting"), torch.from_numpy(values.reshape(110, -1)[:, :3] * 2),
                                   rtol=0, atol=0)
        np.testing.assert_array_equal(fs.load(name, "raw").numpy(), values)
    # an edit inside the old rows is no append: everything is recomputed
    more["layer_0"][3] += 1
    save_layers(tmp_path / "d", more)
    assert [s.reason for s in featstore.status(path, ["test_counting"], store=store_dir).slots
            if s.state != "fresh"] == ["input bytes changed"]
    _CALLS.clear()
    again = featstore.build(path, ["test_counting"], store=store_dir)
    assert again.reasons == {"input bytes changed": 1} and _CALLS == [110]


def test_the_build_summary_counts_appended_entries_readably(tmp_path, store_dir):
    """It said `2 computed (2 10 rows appended (100 reused)), 0 reused`."""
    from click.testing import CliRunner

    from featstore.cli import main

    data = layers_of(2, rows=100)
    path = save_layers(tmp_path / "d", data)
    featstore.build(path, ["stats"], store=store_dir)
    save_layers(tmp_path / "d", {name: np.concatenate([v, v[:10]]) for name, v in data.items()})
    shown = CliRunner().invoke(main, ["build", "-d", path, "-f", "stats", "--store", store_dir, "--no-progress"])
    assert shown.exit_code == 0 and "\n  entries  2 computed (2 with 10 rows appended to 100), 0 reused\n" in shown.output


def test_a_failure_in_appended_rows_names_the_rows_of_the_column(tmp_path, store_dir):
    data = layers_of(1, rows=100)
    path = save_layers(tmp_path / "d", data)
    featstore.build(path, ["stats"], store=store_dir)
    more = np.concatenate([data["layer_0"], np.ones((10, DIM, DIM), np.float32)])
    more[104, 1, 2] = np.nan
    save_layers(tmp_path / "d", {"layer_0": more})
    with pytest.raises(featstore.FeaturizerError, match=r"stats on column 'layer_0' \(split train\) returned NaN or inf "
                                                        r"at row 104; nothing of it was stored; its input holds NaN or "
                                                        r"inf at row 104 "):
        featstore.build(path, ["stats"], store=store_dir)
    assert featstore.open(path, store=store_dir).load("layer_0", "stats").shape == (100, 4)  # the old entry stays


def test_in_place_rewrite_of_the_same_size_is_detected(tmp_path, store_dir):
    data = layers_of(1)
    path = save_layers(tmp_path / "d", data)
    featstore.build(path, ["raw"], store=store_dir)
    data["layer_0"] = data["layer_0"][::-1].copy()  # same bytes count, same file size
    save_layers(tmp_path / "d", data)
    assert [s.reason for s in featstore.status(path, store=store_dir).slots] == ["input bytes changed"]


@pytest.mark.parametrize("after", ["mapping", "plan"])
def test_a_file_replaced_while_a_build_runs_is_hashed_again_next_time(tmp_path, store_dir, monkeypatch, after):
    from featstore import planning
    from featstore import split as split_module

    path = save_layers(tmp_path / "d", layers_of(1))
    new = layers_of(1, seed=1)
    save_layers(tmp_path / "new", new)
    module, name = (split_module, "_read_arrow") if after == "mapping" else (planning, "plan")
    real = getattr(module, name)

    def then_replace(*args, **kwargs):  # the dataset is re-saved once the build has mapped / checked it
        out = real(*args, **kwargs)
        for data_file in (tmp_path / "new").glob("*.arrow"):
            data_file.replace(tmp_path / "d" / data_file.name)
        return out

    monkeypatch.setattr(module, name, then_replace)
    featstore.build(path, ["raw"], store=store_dir)  # built what it had mapped: the old file
    monkeypatch.undo()
    # The digest cache must not vouch for the new file with the old file's digests.
    assert [s.reason for s in featstore.status(path, store=store_dir).slots] == ["input bytes changed"]
    assert featstore.build(path, ["raw"], store=store_dir).computed == 1
    np.testing.assert_array_equal(featstore.open(path, store=store_dir).load("layer_0", "raw").numpy(), new["layer_0"])


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "featstore.cli", *args], check=False, capture_output=True, text=True, cwd=cwd)


def test_lockfile_names_what_a_change_invalidates_without_a_store(tmp_path, store_dir):
    data = layers_of(2)
    path = save_layers(tmp_path / "d", data)
    lock = tmp_path / "featstore.lock"
    assert _cli("lock", "-d", path, "-f", "stats", "-f", "svd:k=2", "-o", str(lock), "--store", store_dir).returncode == 0
    locked = json.loads(lock.read_text())
    assert set(locked["featurizers"]) == {"stats", "svd:k=2"} and set(locked["entries"]["train"]) == {"layer_0", "layer_1"}
    assert locked["modules"] == []  # the built-ins need no import
    assert lock.read_text() == json.dumps(locked, indent=1, sort_keys=True) + "\n"  # stable, diff-friendly

    clean = _cli("status", "--lock", str(lock), "-d", path)
    assert clean.returncode == 0, clean.stderr
    assert "4 fresh, 0 stale, 0 missing" in clean.stdout
    fresh = json.loads(_cli("status", "--lock", str(lock), "-d", path, "--json").stdout)[0]
    assert fresh["update"] is None and fresh["counts"] == {"fresh": 4, "stale": 0, "missing": 0}  # zeros too

    data["layer_0"][0] *= 2
    save_layers(tmp_path / "d", data)
    changed = _cli("status", "--lock", str(lock), "-d", path, "--json")
    assert changed.returncode == 1
    slots = json.loads(changed.stdout)[0]["slots"]
    assert {(s["layer"], s["featurizer"], s["reason"]) for s in slots if s["state"] != "fresh"} == {
        ("layer_0", "stats", "input bytes changed"), ("layer_0", "svd:k=2", "input bytes changed")}
    assert json.loads(changed.stdout)[0]["update"] == (  # the command that brings it up to date, for scripts
        f"featstore build --dataset {path} --featurizer stats --featurizer svd:k=2 && featstore lock --dataset {path} "
        f"--featurizer stats --featurizer svd:k=2 -o {lock}")
    only = _cli("status", "--lock", str(lock), "-d", path, "--layers", "layer_1")  # layer_0 was "gone" here
    assert only.returncode == 0 and only.stdout.endswith(": 2 fresh, 0 stale, 0 missing\n"), only.stdout
    save_layers(tmp_path / "d", {"layer_1": data["layer_1"]})
    gone = _cli("status", "--lock", str(lock), "-d", path, "--json")
    assert {(s["layer"], s["state"], s["reason"]) for s in json.loads(gone.stdout)[0]["slots"]} == {
        ("layer_0", "stale", "layer gone from the dataset"), ("layer_1", "fresh", "")}

    broken = _cli("status", "--lock", str(tmp_path / "nope.lock"), "-d", path)
    assert broken.returncode == 2 and "nope.lock" in broken.stderr


def test_lockfile_locks_the_labels_too(tmp_path):
    """Training reads its labels from the store: a lockfile that did not lock them let a CI gate
    pass when only the labels changed. A lock from before labels were locked does not check them."""
    data = layers_of(1)

    def save(labels):
        shutil.rmtree(tmp_path / "d", ignore_errors=True)
        columns = {**data, **({"category_label": labels} if labels is not None else {})}
        datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "d"))
        return str(tmp_path / "d")

    path, lock = save(np.arange(ROWS) % 3), tmp_path / "featstore.lock"
    assert _cli("lock", "-d", path, "-f", "stats", "-o", str(lock)).returncode == 0
    locked = json.loads(lock.read_text())
    assert locked["labels"]["column"] == "category_label" and set(locked["labels"]["entries"]) == {"train"}

    def labels_state(lock_file):
        out = _cli("status", "--lock", str(lock_file), "-d", path, "--json")
        return out.returncode, [(s["state"], s["reason"]) for s in json.loads(out.stdout)[0]["slots"]
                                if s["featurizer"] == "labels"]

    assert labels_state(lock) == (0, [("fresh", "")])
    save((np.arange(ROWS) + 1) % 3)
    assert labels_state(lock) == (1, [("stale", "labels changed")])
    old = tmp_path / "old.lock"  # written by an earlier featstore: no "labels" field
    old.write_text(json.dumps({k: v for k, v in locked.items() if k != "labels"}))
    assert labels_state(old) == (0, [])
    save(None)
    assert labels_state(lock) == (1, [("stale", "label column gone from the dataset")])


def test_lockfile_of_a_users_own_featurizer_checks_its_code(tmp_path):
    path = save_layers(tmp_path / "d", layers_of(2))
    project = tmp_path / "project"
    project.mkdir()
    helper = "def _scale(x):\n    return 2 * x\n\n"
    decorated = "import featstore\n\n{}@featstore.featurizer('test_lockfeat')\ndef f(x):\n    return _scale(x).mean(1)\n"
    (project / "lockfeats.py").write_text(decorated.format(helper))
    lock = project / "featstore.lock"
    assert _cli("lock", "-d", path, "-f", "lockfeats:f", "-o", str(lock), cwd=project).returncode == 0
    assert json.loads(lock.read_text())["modules"] == ["lockfeats"]
    clean = _cli("status", "--lock", str(lock), "-d", path, cwd=project)  # the lock says which module to import
    assert clean.returncode == 0 and "2 fresh, 0 stale, 0 missing" in clean.stdout, clean.stderr
    (project / "lockfeats.py").write_text(decorated.format(helper.replace("2 * x", "3 * x")))
    changed = _cli("status", "--lock", str(lock), "-d", path, cwd=project)
    assert changed.returncode == 1 and "featurizer code changed (_scale)" in changed.stdout  # names the helper
    elsewhere = _cli("status", "--lock", str(lock), "-d", path, cwd=tmp_path)
    assert elsewhere.returncode == 2 and "cannot import 'lockfeats', which defines featurizers" in elsewhere.stderr


def test_a_lockfile_written_by_a_script_run_as_main_names_the_script_s_module(tmp_path):
    """A training script that defines its featurizer and writes the lock (`python train.py`, or
    `python scripts/train.py` from the project) must give a lock the CI job's `featstore status
    --lock` can import: the lock named the module `__main__`, and CI failed with "unknown
    featurizer". A featurizer no module name reaches (`python -c`) cannot be locked: said at once."""
    path = save_layers(tmp_path / "d", layers_of(2))
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    script = ("import sys\nimport featstore\nfrom featstore.freshness import lock_bytes\n\n\n"
              "@featstore.featurizer('test_scriptfeat')\ndef f(x):\n    return x.mean(1)\n\n\n"
              "if __name__ == '__main__':\n    lock = lock_bytes(featstore.lock(sys.argv[2], ['test_scriptfeat']))\n"
              "    open(sys.argv[1], 'wb').write(lock)\n")
    for where, module in (("train.py", "train"), ("scripts/train.py", "scripts.train")):
        (project / where).write_text(script)
        lock = tmp_path / f"{module}.lock"
        subprocess.run([sys.executable, where, str(lock), path], cwd=project, check=True)
        assert json.loads(lock.read_text())["modules"] == [module]
        clean = _cli("status", "--lock", str(lock), "-d", path, cwd=project)
        assert clean.returncode == 0 and "2 fresh, 0 stale, 0 missing" in clean.stdout, clean.stderr

    pinned = script.replace("__name__ == '__main__'", "True").replace("_scriptfeat')", "_scriptfeat', version='1')")
    nameless = subprocess.run([sys.executable, "-c", pinned, str(tmp_path / "x.lock"), path],  # no file: pinned
                              check=False, cwd=project, capture_output=True, text=True)
    assert nameless.returncode != 0 and not (tmp_path / "x.lock").exists()
    assert "featurizer test_scriptfeat is defined in __main__ where no module name reaches it" in nameless.stderr

    old = json.loads((tmp_path / "train.lock").read_text()) | {"modules": ["__main__"]}  # an earlier featstore's
    (tmp_path / "old.lock").write_text(json.dumps(old))
    refused = _cli("status", "--lock", str(tmp_path / "old.lock"), "-d", path, cwd=project)
    assert refused.returncode == 2 and "the lockfile names the module __main__" in refused.stderr, refused.stderr


def test_columns_gone_from_the_data_are_stale_until_a_build_drops_them(tmp_path, store_dir):
    """A layer (or a split) removed from the dataset: its catalogued features were still served
    by `open`, `status` said all fresh and `require_fresh` failed with "--layers ... matches no
    column". Now status calls them stale (exit 1), a build drops them, gc frees their entries."""
    data = layers_of(2)
    path = tmp_path / "d"
    dd = datasets.DatasetDict({name: datasets.Dataset.from_dict({k: v[rows] for k, v in data.items()})
                               for name, rows in (("train", slice(0, 20)), ("test", slice(20, ROWS)))})
    dd.save_to_disk(str(path))
    assert featstore.build(str(path), ["stats", "svd:k=2"], store=store_dir).computed == 8
    datasets.DatasetDict({"train": dd["train"].remove_columns("layer_1")}).save_to_disk(str(tmp_path / "d2"))
    shutil.rmtree(path)
    (tmp_path / "d2").rename(path)

    gone = {("test", layer, spec): "split gone from the dataset" for layer in data for spec in ("stats", "svd:k=2")}
    gone |= {("train", "layer_1", spec): "layer gone from the dataset" for spec in ("stats", "svd:k=2")}
    report = featstore.status(str(path), store=store_dir)
    assert {(s.split, s.layer, s.featurizer): s.reason for s in report.slots if s.state != "fresh"} == gone
    assert report.work() == {"entries": 0, "columns": 0, "input_bytes": 0, "reused": 0, "dropped": 6}
    only = featstore.status(str(path), layers=["layer_0"], store=store_dir)  # the globs asked for, as for any slot
    assert {s.layer for s in only.slots if s.state != "fresh"} == {"layer_0"}  # of the gone split
    cli = _cli("status", "-d", str(path), "--store", store_dir)
    assert cli.returncode == 1 and "2 fresh, 6 stale, 0 missing; a build would drop 6 features of columns gone" \
        in cli.stdout, cli.stdout
    with pytest.raises(featstore.StaleError, match=r"6 catalogued features .* train/layer_1/stats: stale, layer gone"):
        featstore.open(str(path), store=store_dir, require_fresh=True)

    rebuilt = _cli("build", "-d", str(path), "-f", "stats", "-f", "svd:k=2", "--store", store_dir, "--no-progress")
    assert rebuilt.returncode == 0 and "0 computed, 2 reused" in rebuilt.stdout
    assert "dropped  6 features of columns gone from the dataset (test/layer_0, test/layer_1, train/layer_1)" \
        in rebuilt.stdout, rebuilt.stdout
    fs = featstore.open(str(path), store=store_dir, require_fresh=True)
    assert fs.splits == ["train"] and fs.layers == ["layer_0"] and len(fs.catalog.rows) == 2
    assert len(featstore.gc(store_dir).removed) == 6 and featstore.verify(store_dir).ok


def test_an_empty_split_is_left_out_and_said_so(tmp_path, store_dir, caplog):
    """A split without rows crashed every build: a save_to_disk split has no data file then
    ('ArrowInvalid: Must pass at least one table'), and featurizers failed on an empty batch. It
    has no features: it is left out with a warning; features built while it had rows are stale."""
    data = layers_of(1)

    def save(test_rows):
        shutil.rmtree(tmp_path / "d", ignore_errors=True)
        full = datasets.Dataset.from_dict({**data, "category_label": np.arange(ROWS) % 3})
        dd = datasets.DatasetDict({"train": full.select(range(20)), "test": full.select(range(20, 20 + test_rows))})
        dd.flatten_indices().save_to_disk(str(tmp_path / "d"))
        return str(tmp_path / "d")

    path = save(10)
    featstore.build(path, ["stats"], store=store_dir)
    save(0)
    # datasets 4 writes no data file for a split without rows, datasets 3 an empty one: either is left out
    with caplog.at_level("WARNING"):
        report = featstore.status(path, store=store_dir)
    assert f"{path}: split test has no rows, so no features: left out" in caplog.text
    assert {(s.split, s.featurizer, s.reason) for s in report.slots if s.state != "fresh"} == {
        ("test", "stats", "split empty in the dataset"), ("test", "labels", "split empty in the dataset")}
    rebuilt = featstore.build(path, ["stats", "svd:k=2"], store=store_dir)
    assert rebuilt.computed == 1 and set(rebuilt.dropped) == {("test", "layer_0", "stats"),
                                                                ("test", "category_label", "labels")}
    fs = featstore.open(path, store=store_dir, require_fresh=True)
    assert fs.splits == ["train"] and fs.load("layer_0", "svd:k=2").shape == (20, 2)
    in_memory = datasets.DatasetDict({"train": datasets.Dataset.from_dict(data), "test": datasets.Dataset.from_dict(
        {k: v[:0] for k, v in data.items()})})
    assert featstore.build(in_memory, ["stats"], store=store_dir).computed == 1
    with pytest.raises(featstore.DatasetError, match=r"has no rows$"):
        featstore.build(datasets.DatasetDict({"test": in_memory["test"]}), ["stats"], store=store_dir)


def test_a_custom_label_column_is_kept_by_later_builds_and_checked_by_status(tmp_path, store_dir):
    """Built with --label-column y: a later build without the flag dropped the labels, and status
    never checked them (changed labels: all fresh, exit 0). Now the catalog's label column is the
    default for both; one removed from the data is stale, then dropped."""
    data = layers_of(1)

    def save(labels):
        shutil.rmtree(tmp_path / "d", ignore_errors=True)
        datasets.Dataset.from_dict({**data, **({"y": labels} if labels is not None else {})}).save_to_disk(
            str(tmp_path / "d"))
        return str(tmp_path / "d")

    path = save(np.arange(ROWS) % 3)
    featstore.build(path, ["stats"], label_column="y", store=store_dir)
    featstore.build(path, ["stats", "svd:k=2"], store=store_dir)  # no label column given: y still
    assert featstore.open(path, store=store_dir).labels().tolist() == (np.arange(ROWS) % 3).tolist()

    save((np.arange(ROWS) + 1) % 3)
    changed = _cli("status", "-d", path, "--store", store_dir)
    assert changed.returncode == 1 and "stale  train  y  labels  labels changed" in changed.stdout, \
        changed.stdout
    featstore.build(path, ["stats"], store=store_dir)
    assert featstore.open(path, store=store_dir, require_fresh=True).labels().tolist() == \
        ((np.arange(ROWS) + 1) % 3).tolist()

    save(None)
    gone = featstore.status(path, store=store_dir)
    assert [(s.layer, s.featurizer, s.reason) for s in gone.slots if s.state != "fresh"] == [
        ("y", "labels", "label column gone from the dataset")]
    with pytest.raises(featstore.StaleError, match="train/y/labels: stale, label column gone from the dataset"):
        featstore.open(path, store=store_dir, require_fresh=True)
    assert featstore.build(path, ["stats"], store=store_dir).dropped == [("train", "y", "labels")]
    fs = featstore.open(path, store=store_dir, require_fresh=True)
    assert fs.catalog.label_column is None and featstore.status(path, store=store_dir).fresh


def test_status_exit_codes_gate_ci(tmp_path, store_dir):
    data = layers_of(2)
    data["model.layers.0.self_attn.q_proj"] = data.pop("layer_1")  # a long name keeps the columns aligned
    path = save_layers(tmp_path / "d", data)
    assert _cli("build", "-d", path, "-f", "stats", "--store", store_dir, "--no-progress").returncode == 0
    fresh = _cli("status", "-d", path, "--store", store_dir)
    assert fresh.returncode == 0 and "2 fresh, 0 stale, 0 missing" in fresh.stdout
    missing = _cli("status", "-d", path, "-f", "stats", "-f", "norms", "--store", store_dir)
    assert missing.returncode == 1
    assert missing.stdout.splitlines()[:2] == [
        "missing  train  layer_0                          norms  not built",
        "missing  train  model.layers.0.self_attn.q_proj  norms  not built",
    ]
    assert "2 fresh, 0 stale, 2 missing; a build would compute 2 entries from 2 columns" in missing.stdout
    error = _cli("status", "-d", str(tmp_path / "nowhere"), "--store", store_dir)
    assert error.returncode == 2 and "nowhere" in error.stderr


def test_changed_labels_make_the_labels_slot_stale(sanity_dir, store_dir):
    import os
    import shutil

    featstore.build("sanity", ["stats"], store=store_dir)
    dd = datasets.load_from_disk(str(sanity_dir), keep_in_memory=True)
    test = dd["test"].with_format("numpy")[:]
    test["category_label"] = (test["category_label"] + 1) % 10
    dd["test"] = datasets.Dataset.from_dict(test, features=dd["test"].features)
    dd.save_to_disk(str(sanity_dir) + ".new")
    shutil.rmtree(sanity_dir)
    os.rename(str(sanity_dir) + ".new", sanity_dir)
    stale = [(s.split, s.layer, s.featurizer, s.reason) for s in featstore.status("sanity", store=store_dir).slots
             if s.state != "fresh"]
    assert stale == [("test", "category_label", "labels", "labels changed")]
    featstore.build("sanity", ["stats"], store=store_dir)
    assert featstore.status("sanity", store=store_dir).fresh
    np.testing.assert_array_equal(featstore.open("sanity", store=store_dir).labels("test").numpy(), test["category_label"])


def test_labels_of_appended_rows_are_said_to_be_appended(tmp_path, store_dir):
    """Not `labels changed`, which reads as if the old rows' labels had: they are as they were."""
    rng = np.random.default_rng(0)
    w, y = rng.standard_normal((60, 4, 4)).astype(np.float32), np.arange(60) % 3
    features = datasets.Features({"w": datasets.Array2D((4, 4), "float32"), "category_label": datasets.ClassLabel(3)})

    def save(rows: int, labels=y):
        datasets.Dataset.from_dict({"w": w[:rows], "category_label": labels[:rows]}, features=features).save_to_disk(
            str(tmp_path / "new"))
        shutil.rmtree(tmp_path / "d", ignore_errors=True)
        os.rename(tmp_path / "new", tmp_path / "d")
        return str(tmp_path / "d")

    path = save(50)
    featstore.build(path, ["stats"], store=store_dir)
    path = save(60)
    assert {(s.featurizer, s.reason) for s in featstore.status(path, store=store_dir).slots if s.state != "fresh"} == {
        ("stats", "10 rows appended to 50"), ("labels", "10 rows appended to 50")}
    path = save(60, np.where(np.arange(60) == 7, 2, y))  # one old row's label edited
    assert [s.reason for s in featstore.status(path, store=store_dir).slots if s.featurizer == "labels"] == [
        "labels changed"]
