import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import matrices

import featstore
import featstore.torch
from featstore import ColumnError, NotFoundError, StoreError, read_column
from featstore.featurizers import parse_spec


def _snapshot(store_dir):
    """Every file under the store with its bytes: 'the store as it was'."""
    out = {}
    for folder, _, files in os.walk(store_dir):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, store_dir)] = Path(path).read_bytes()
    return out


def test_loaded_features_equal_a_direct_computation(sanity_dir, store_dir):
    report = featstore.build("sanity", ["raw", "stats", "svd:k=8"], store=store_dir, device="cpu")
    assert (report.computed, report.reused) == (2 * 8 * 3, 0)
    fs = featstore.open("sanity", store=store_dir)
    assert fs.splits == ["test", "train"]
    assert fs.layers == [f"layer_{i:03d}" for i in range(8)]
    assert fs.featurizers == ["raw", "stats", "svd:k=8"]
    dd = datasets.load_from_disk(str(sanity_dir))
    for split in ("train", "test"):
        column = read_column(dd[split], "layer_006")
        for spec in ("raw", "stats", "svd:k=8"):
            expected = parse_spec(spec)(torch.from_numpy(column.copy()))
            loaded = fs.load("layer_006", spec, split=split)
            assert isinstance(loaded, torch.Tensor)
            torch.testing.assert_close(loaded, expected, rtol=0, atol=0)
        np.testing.assert_array_equal(fs.labels(split).numpy(), read_column(dd[split], "category_label"))
    assert fs.label_names[0] == "category_0"
    assert fs.load("layer_000", "svd").shape == (256, 8)  # the only svd spec, by name


def test_loads_take_dtype_and_device_by_name_and_check_them_before_reading(sanity_dir, store_dir):
    from featstore.torch import load_split

    featstore.build("sanity", ["stats"], layers=["layer_000", "layer_001"], store=store_dir, device="cpu")
    fs = featstore.open("sanity", store=store_dir)
    stored = fs.load("layer_000", "stats")
    assert stored.dtype == torch.float32
    for name, dtype in (("float64", torch.float64), ("torch.float16", torch.float16), ("bfloat16", torch.bfloat16),
                        (np.dtype("float64"), torch.float64), (torch.float16, torch.float16)):
        loaded = fs.load("layer_000", "stats", dtype=name, device="cpu")
        assert loaded.dtype == dtype and loaded.device.type == "cpu"
        torch.testing.assert_close(loaded, stored.to(dtype), rtol=0, atol=0)
    stack = fs.load_many(["layer_000", "layer_001"], "stats", stack=True, dtype="float16")
    assert stack.dtype == torch.float16 and torch.equal(stack[0], stored.half())
    features, labels = load_split("sanity", layers="layer_001", featurizers="stats", store=store_dir, dtype="float64")
    assert features[("layer_001", "stats")].dtype == torch.float64 and labels.dtype == torch.int64
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert fs.load("layer_000", "stats", device="auto").device.type == auto
    assert fs.labels("train", device="auto").device.type == auto
    for bad in ("floaty", 3, "cuda", "Tensor"):  # "cuda": a device passed as the dtype; torch.Tensor: not a dtype
        with pytest.raises(featstore.FeatstoreError, match=rf"dtype {bad!r} is not a torch dtype: pass a torch.dtype "
                                                           r"or its name \(float32, float16, bfloat16, float64\)"):
            fs.load_many(["layer_000"], "stats", dtype=bad)
    with pytest.raises(featstore.FeatstoreError, match=r"device 'gpu' is not usable here: .*; use cpu or auto"):
        fs.load("layer_000", "stats", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(featstore.FeatstoreError, match=r"device 'cuda' is not usable here"):
            fs.labels("train", device="cuda")


def test_second_build_computes_nothing_and_a_new_param_only_itself(sanity_dir, store_dir):
    featstore.build("sanity", store=store_dir)
    before = _snapshot(store_dir)
    again = featstore.build("sanity", store=store_dir)
    assert (again.computed, again.reused, again.bytes_written) == (0, 32, 0)
    assert {k: v for k, v in _snapshot(store_dir).items() if "catalog" not in k} == \
        {k: v for k, v in before.items() if "catalog" not in k}
    more = featstore.build("sanity", ["stats", "svd:k=4"], store=store_dir)
    assert {e.featurizer for e in more.entries if e.status == "computed"} == {"svd:k=4"}
    assert more.computed == 16
    fs = featstore.open("sanity", store=store_dir)
    assert fs.featurizers == ["stats", "svd", "svd:k=4"]
    assert fs.row("layer_000", "svd:k=16").featurizer == "svd"  # any spelling of the same spec


def test_one_string_is_one_spec_or_glob_not_its_letters(sanity_dir, store_dir):
    from featstore.torch import load_split

    report = featstore.build("sanity", "svd:k=4", layers="layer_00[01]", store=store_dir)
    assert {(e.layer, e.featurizer) for e in report.entries} == {("layer_000", "svd:k=4"), ("layer_001", "svd:k=4")}
    assert featstore.status("sanity", "svd:k=4", layers="layer_00[01]", store=store_dir).fresh
    fs = featstore.open("sanity", store=store_dir)
    assert fs.load_many("layer_001", "svd:k=4", stack=True).shape == (1, 256, 4)
    features, _ = load_split("sanity", layers="layer_000", featurizers="svd:k=4", store=store_dir)
    assert list(features) == [("layer_000", "svd:k=4")]


def test_a_build_takes_a_torch_device_and_refuses_other_objects(sanity_dir, store_dir):
    report = featstore.build("sanity", ["stats"], layers="layer_000", store=store_dir, device=torch.device("cpu"))
    assert report.device == "cpu" and report.computed == 2
    for bad in (None, 0, torch.device("meta")):
        with pytest.raises(featstore.FeatstoreError, match=r"is not usable here: a build runs on auto, cpu, cuda or cuda:N"):
            featstore.build("sanity", ["stats"], store=store_dir, device=bad)


def test_a_bare_name_without_its_defaults_is_ambiguous(sanity_dir, store_dir):
    featstore.build("sanity", ["svd:k=4", "svd:k=8"], layers=["layer_000"], store=store_dir)
    fs = featstore.open("sanity", store=store_dir)
    with pytest.raises(NotFoundError, match=r"no featurizer 'svd'.*ambiguous, pass one of: svd:k=4, svd:k=8"):
        fs.load("layer_000", "svd")
    assert fs.load("layer_000", "svd:k=8").shape == (256, 8)


def test_a_spec_stored_only_in_another_dtype_is_named_with_that_dtype(sanity_dir, store_dir):
    featstore.build("sanity", ["svd:k=4"], layers=["layer_000"], store=store_dir, dtype="float16")
    fs = featstore.open("sanity", store=store_dir)
    with pytest.raises(NotFoundError, match=r"^no featurizer 'svd:k=4' in 'sanity': it was stored as "
                                            r"'svd:k=4,dtype=float16'; load that spec \(`dtype=` converts.*, or build "
                                            r"this one: featstore build --dataset sanity --featurizer svd:k=4 --store"):
        fs.load("layer_000", "svd:k=4")
    with pytest.raises(NotFoundError, match=r"stored as 'svd:k=4,dtype=float16'; .*--featurizer svd:k=4,dtype=bfloat16 "):
        fs.load("layer_000", "svd:dtype=bfloat16,k=4")
    assert fs.load("layer_000", "svd:k=4,dtype=float16", dtype="float32").dtype == torch.float32


def test_datasets_sharing_a_layer_share_its_entry(tmp_path, store_dir):
    shared, other = matrices(30, (6, 6), seed=1), matrices(30, (6, 6), seed=2)
    features = datasets.Features({"a": datasets.Array2D((6, 6), "float32"), "b": datasets.Array2D((6, 6), "float32")})
    datasets.Dataset.from_dict({"a": shared, "b": other}, features=features).save_to_disk(str(tmp_path / "one"))
    datasets.Dataset.from_dict({"a": shared, "b": other + 1}, features=features).save_to_disk(str(tmp_path / "two"))
    featstore.build(str(tmp_path / "one"), ["svd"], store=store_dir)
    report = featstore.build(str(tmp_path / "two"), ["svd"], store=store_dir)
    assert {(e.layer, e.status) for e in report.entries} == {("a", "reused"), ("b", "computed")}
    one = featstore.open(str(tmp_path / "one"), store=store_dir)
    two = featstore.open(str(tmp_path / "two"), store=store_dir)
    assert one.row("a", "svd").key == two.row("a", "svd").key
    assert one.row("b", "svd").key != two.row("b", "svd").key
    one.close(), two.close()  # their leases would keep every entry
    evicted = {key: why for key, _, why in featstore.gc(store_dir, max_size=0, dry_run=True).removed}
    assert evicted[one.row("a", "svd").key] == ("over the size budget (least recently used): "
                                                f"{one.dataset} train/a svd and 1 more")


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[1.0] * 4] * 5 + [[1.0] * 3], r"'bad' is ragged: row 5"),
        ([[1.0] * 4] * 3 + [None] + [[1.0] * 4] * 2, r"'bad' has a null at row 3"),
    ],
)
def test_bad_columns_fail_before_the_store_changes(tmp_path, store_dir, sanity_dir, bad, message):
    featstore.build("sanity", ["svd"], store=store_dir)
    before = _snapshot(store_dir)
    good = matrices(6, (2, 2))
    ds = datasets.Dataset.from_dict({"good": good.reshape(6, 4).tolist(), "bad": bad})
    ds.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ColumnError, match=message):
        featstore.build(str(tmp_path / "bad"), ["raw"], store=store_dir)
    assert _snapshot(store_dir) == before
    assert featstore.open("sanity", store=store_dir).load("layer_001", "svd").shape == (256, 16)


def test_string_columns_chosen_explicitly_are_a_named_error(tmp_path, store_dir):
    datasets.Dataset.from_dict({"w": [[1.0, 2.0]] * 3, "s": [["a", "b"]] * 3}).save_to_disk(str(tmp_path / "d"))
    assert featstore.build(str(tmp_path / "d"), ["raw"], store=store_dir).computed == 1  # s is skipped
    assert featstore.build(str(tmp_path / "d"), ["raw"], layers=["*"], store=store_dir).reused == 1  # a glob: layers
    before = _snapshot(store_dir)
    with pytest.raises(ColumnError, match=r"column 's' holds string values \(first at row 0\)"):
        featstore.build(str(tmp_path / "d"), ["raw"], layers=["s"], store=store_dir)
    assert _snapshot(store_dir) == before


def test_plain_dataset_object_is_split_train(store_dir):
    ds = datasets.Dataset.from_dict({"w": matrices(8, (3, 3))}, features=datasets.Features(
        {"w": datasets.Array2D((3, 3), "float32")}))
    featstore.build(ds, ["stats"], store=store_dir)
    fs = featstore.open(ds, store=store_dir)
    assert fs.splits == ["train"] and fs.load("w", "stats").shape == (8, 4)
    with pytest.raises(NotFoundError, match=r"built without a label column"):
        fs.labels()
    # no file or name opens it: what to build is said as a call, not a command
    with pytest.raises(NotFoundError, match=r"; or build it: featstore.build\(dataset, \['svd:k=4'\], "
                                            rf"store={re.escape(repr(store_dir))}\)$"):
        fs.load("w", "svd:k=4")


def test_open_errors_list_what_exists(sanity_dir, store_dir):
    featstore.build("sanity", ["stats"], layers=["layer_00[12]"], store=store_dir)
    fs = featstore.open("sanity", store=store_dir)
    with pytest.raises(NotFoundError, match=r"^no layer 'layer_009' in 'sanity'; layers: layer_001, layer_002$"):
        fs.load("layer_009", "stats")  # another layer, not a typo of one: no guess
    for typo in ("Layer_001", "layer-1", "layer_0001"):  # case, separators, zero padding
        with pytest.raises(NotFoundError, match=rf"^no layer '{typo}' in 'sanity' \(did you mean 'layer_001'\?\); "):
            fs.load(typo, "stats")
    with pytest.raises(NotFoundError, match=r"^no featurizer 'STATS' in 'sanity' \(did you mean 'stats'\?\); "
                                            r"available: stats$"):
        fs.load("layer_001", "STATS")
    with pytest.raises(NotFoundError, match=rf"no featurizer 'svd:k=16'.*available: stats; or build it: featstore build "
                                            rf"--dataset sanity --featurizer svd --store {re.escape(store_dir)}$"):
        fs.load("layer_001", "svd:k=16")
    with pytest.raises(NotFoundError, match=r"no featurizer 'no_such'.*available: stats$"):  # nothing to build
        fs.load("layer_001", "no_such")
    with pytest.raises(NotFoundError, match=r"no split 'validation'.*splits: test, train"):
        fs.load("layer_001", "stats", split="validation")
    # arguments swapped, or a featurizer passed as the layers: said so
    with pytest.raises(NotFoundError, match=r"^'layer_001' is a layer of 'sanity' and 'stats' is not: pass the layer "
                                            r"first, then the featurizer$"):
        fs.load("stats", "layer_001")
    with pytest.raises(NotFoundError, match=r"^no layer 'stats' in 'sanity' \('stats' is a featurizer, not a layer: "
                                            r"pass it as the featurizer\); layers: layer_001, layer_002$"):
        fs.load_many("stats", "stats")
    with pytest.raises(NotFoundError, match=r"holds no features of '1k' \(it holds: sanity\); build them first: featstore build --dataset 1k"):
        featstore.open("1k", store=store_dir)
    featstore.build("sanity", ["svd:k=4"], layers=["layer_001"], store=store_dir)  # of one layer of the two
    with pytest.raises(NotFoundError, match=r"no svd:k=4 features of 'layer_002' \(split train\) in 'sanity'; build "
                                            rf"them: featstore build --dataset sanity --featurizer svd:k=4 --layers "
                                            rf"layer_002 --store {re.escape(store_dir)}$"):
        featstore.open("sanity", store=store_dir).load("layer_002", "svd")
    assert isinstance(NotFoundError("x"), KeyError)


def test_store_location_from_environment(sanity_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATSTORE_STORE", str(tmp_path / "envstore"))
    featstore.build("sanity", ["stats"], layers=["layer_000"])
    assert (tmp_path / "envstore" / "featstore.json").exists()
    assert featstore.open("sanity").layers == ["layer_000"]


def test_loads_take_chunk_digests_from_the_catalog_and_the_entry_metadata_decides(sanity_dir, store_dir, monkeypatch):
    """Catalog rows record each entry's chunks, so a load reads no metadata file; when the record
    is stale (the entry was rebuilt with other bytes under its key), the entry's own metadata wins."""
    from conftest import entry_info

    from featstore.store import Store

    featstore.build("sanity", ["stats"], layers=["layer_00[01]"], store=store_dir)
    store = Store.open(store_dir)
    fs = featstore.open("sanity", store=store_dir)
    assert all((r.chunk_rows, r.chunks) == store.entry_chunks(r.key) for r in fs.catalog.rows)
    expected = fs.load("layer_001", "stats").numpy()

    def no_metadata(self, key):
        raise AssertionError("read an entry's metadata")

    with monkeypatch.context() as m:
        m.setattr(Store, "_metadata", no_metadata)
        np.testing.assert_array_equal(fs.load_many(["layer_001"], "stats", stack=True)[0].numpy(), expected)

    row = fs.row("layer_001", "stats")  # rebuilt elsewhere, e.g. on another device: same key, other bits
    store.delete_entry(row.key)
    store.write_entry(entry_info(expected * 2, row.key), expected * 2)
    np.testing.assert_array_equal(fs.load("layer_001", "stats").numpy(), expected * 2)


def test_a_missing_entry_names_the_feature_and_the_build_that_restores_it(sanity_dir, store_dir):
    featstore.build("sanity", ["stats"], layers=["layer_00[01]"], store=store_dir)
    featstore.gc(store_dir, max_size=0)  # least recently used first, referenced or not: all gone
    fs = featstore.open("sanity", store=store_dir)
    def restore(layers=""):  # the featurizer's build (of that layer), not build's defaults
        return (rf"is missing from {re.escape(store_dir)}; rebuild to recreate it \(featstore build --dataset sanity "
                rf"--featurizer stats {layers}--store {re.escape(store_dir)}\)$")

    with pytest.raises(StoreError, match=r"^stats features of 'layer_001' \(split test\) of 'sanity': entry \w+ "
                                         + restore("--layers layer_001 ")):
        fs.load("layer_001", "stats", split="test")
    with pytest.raises(StoreError, match=r"^stats features of 'layer_000' \(split train\) of 'sanity': .*"
                                         + restore("--layers layer_000 ")):
        fs.load_many(["layer_000", "layer_001"], "stats", stack=True)
    with pytest.raises(StoreError, match=r"^the labels of split train of 'sanity': entry \w+ " + restore()):
        fs.labels()
    with pytest.raises(StoreError, match=r"^stats features of 'layer_000' \(split train\) of 'sanity': .*"
                                         + restore()):
        featstore.torch.FeatureDataset("sanity", layers="layer_000", featurizers="stats", store=store_dir)[0]
    featstore.build("sanity", ["stats"], layers=["layer_00[01]"], store=store_dir)
    assert fs.load("layer_001", "stats", split="test").shape == (64, 4)


def test_a_missing_entry_of_a_featurizer_of_yours_names_the_module_to_import(sanity_dir, store_dir, tmp_path,
                                                                             monkeypatch):
    (tmp_path / "feats_restore.py").write_text("import featstore\n\n@featstore.featurizer('test_restore_colmax', "
                                               "version='1')\ndef colmax(x):\n    return x.amax(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("feats_restore")
    featstore.build("sanity", ["test_restore_colmax"], layers="layer_000", store=store_dir, progress=False)
    featstore.gc(store_dir, max_size=0)
    with featstore.open("sanity", store=store_dir) as fs, pytest.raises(StoreError, match=(
            r"\(featstore build --dataset sanity --import feats_restore --featurizer test_restore_colmax --layers "
            rf"layer_000 --store {re.escape(store_dir)}\)$")):
        fs.load("layer_000", "test_restore_colmax")


def test_stacking_layers_of_different_shapes_names_them(tmp_path, store_dir):
    path = str(tmp_path / "d")
    datasets.Dataset.from_dict({"a": matrices(6, (4, 4)), "b": matrices(6, (8, 8), seed=1)}).save_to_disk(path)
    featstore.build(path, ["raw", "svd:k=2"], store=store_dir, device="cpu")
    fs = featstore.open(path, store=store_dir)
    assert fs.load_many(["a", "b"], "svd:k=2", stack=True).shape == (2, 6, 2)
    with pytest.raises(featstore.FeatstoreError, match=r"^cannot stack raw features of layers of different shapes "
                                                       r"\(a \(6, 4, 4\), b \(6, 8, 8\)\); load them without stack=True"):
        fs.load_many(["a", "b"], "raw", stack=True)
    assert fs.load_many(["a", "b"], "raw")["b"].shape == (6, 8, 8)


def test_the_python_api_shows_progress_as_the_commands_do_unless_told_not_to(sanity_dir, store_dir, featstore_home):
    """A notebook's or script's featstore.build of 10k ran for minutes without a word."""
    env = dict(os.environ, FEATSTORE_HOME=str(featstore_home), FEATSTORE_PROGRESS_SECONDS="0")

    def python(call: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", f"import featstore; featstore.{call}"], capture_output=True,
                              text=True, env=env, timeout=300, check=False)

    built = python(f"build('sanity', ['stats'], layers='layer_00[01]', store={store_dir!r})")
    assert built.returncode == 0, built.stderr
    lines = [line for line in built.stderr.splitlines() if line.startswith("build sanity: ")]
    assert len(lines) == 4 and lines[-1].startswith("build sanity: 4/4 columns (100%) in "), built.stderr
    quiet = python(f"build('sanity', ['raw'], layers='layer_00[01]', store={store_dir!r}, progress=False)")
    assert quiet.returncode == 0 and "build sanity" not in quiet.stderr, quiet.stderr
    checked = python(f"verify({store_dir!r})")
    assert checked.returncode == 0 and "verify: 10/10 entries (100%)" in checked.stderr, checked.stderr


def test_reports_show_a_summary_in_a_notebook_not_every_slot(sanity_dir, store_dir):
    built = featstore.build("sanity", ["stats"], layers="layer_00[01]", store=store_dir, progress=False, device="cpu")
    assert re.fullmatch(r"BuildReport\('sanity' on cpu: 4 computed, 0 reused, \d+ bytes written in [\d.]+ s\)",
                        repr(built)), repr(built)
    again = featstore.build("sanity", ["stats"], layers="layer_00[01]", store=store_dir, progress=False)
    assert re.fullmatch(r"BuildReport\('sanity': 0 computed, 4 reused, 0 bytes written in [\d.]+ s\)", repr(again))
    assert repr(featstore.status("sanity", ["stats", "svd"], layers="layer_00[01]", store=store_dir)) == \
        "StatusReport('sanity': 6 fresh, 0 stale, 4 missing)"
    assert re.fullmatch(r"GcReport\(dry run: 6 entries removed, (\d+) of \1 bytes freed\)",
                        repr(featstore.gc(store_dir, dry_run=True, max_size=0))), "every entry, nothing kept"
