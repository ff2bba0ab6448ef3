import os

import datasets
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import array2d_dataset, list_column, matrices

from featstore import DatasetError
from featstore.sources import dataset_id, load_source


def _two_layer_dataset(rows=12, seed=0):
    a, b = matrices(rows, (4, 4), seed), matrices(rows, (4, 4), seed + 1)
    features = datasets.Features({
        "layer_a": datasets.Array2D((4, 4), "float32"),
        "layer_b": datasets.Array2D((4, 4), "float32"),
        "scalar": datasets.Value("float32"),
        "name": datasets.Value("string"),
        "category_label": datasets.ClassLabel(names=["x", "y", "z"]),
    })
    data = {"layer_a": a, "layer_b": b, "scalar": np.zeros(rows, np.float32), "name": ["n"] * rows,
            "category_label": np.arange(rows) % 3}
    return datasets.Dataset.from_dict(data, features=features), a, b


def test_preset_name_and_alias_generate_on_first_use(featstore_home):
    src = load_source("sanity_check_dataset")
    assert src.name == "sanity" and set(src.splits) == {"train", "test"}
    assert (featstore_home / "datasets" / "sanity" / "dataset_dict.json").exists()
    assert src.layers == [f"layer_{i:03d}" for i in range(8)] and src.label_column == "category_label"
    assert src.splits["train"].label_names[:2] == ["category_0", "category_1"]


def test_layer_detection_skips_scalars_strings_and_label(tmp_path):
    ds, a, _ = _two_layer_dataset()
    ds.save_to_disk(str(tmp_path / "one"))
    src = load_source(str(tmp_path / "one"))
    assert list(src.splits) == ["train"]  # a plain Dataset is split train
    assert src.layers == ["layer_a", "layer_b"]
    np.testing.assert_array_equal(src.splits["train"].read("layer_a"), a)
    assert src.name == os.path.realpath(tmp_path / "one") == dataset_id(str(tmp_path / "one"))


def test_dataset_dict_directory_has_all_splits(tmp_path):
    ds, a, _ = _two_layer_dataset(rows=20)
    datasets.DatasetDict(train=ds.select(range(15)), test=ds.select(range(15, 20))).save_to_disk(str(tmp_path / "dd"))
    src = load_source(str(tmp_path / "dd"), layers=["layer_a"])
    assert set(src.splits) == {"train", "test"}
    np.testing.assert_array_equal(src.splits["test"].read("layer_a"), a[15:])


def test_parquet_directory_splits_by_file_name(tmp_path):
    ds, _, b = _two_layer_dataset(rows=20)
    (tmp_path / "pq").mkdir()
    ds.select(range(15)).to_parquet(str(tmp_path / "pq" / "train.parquet"))
    ds.select(range(15, 20)).to_parquet(str(tmp_path / "pq" / "test.parquet"))
    src = load_source(str(tmp_path / "pq"))
    assert set(src.splits) == {"train", "test"} and src.layers == ["layer_a", "layer_b"]
    assert all(type(name) is str for name in src.splits)  # datasets names them NamedSplit('train')
    np.testing.assert_array_equal(src.splits["train"].read("layer_b"), b[:15])
    assert src.splits["train"].label_names == ["x", "y", "z"]


def test_build_from_a_directory_of_unnamed_parquet_files(tmp_path):
    import featstore

    ds, a, _ = _two_layer_dataset(rows=12)
    (tmp_path / "flat").mkdir()
    ds.select(range(8)).to_parquet(str(tmp_path / "flat" / "part-0.parquet"))
    ds.select(range(8, 12)).to_parquet(str(tmp_path / "flat" / "part-1.parquet"))
    report = featstore.build(str(tmp_path / "flat"), ["raw"], store=str(tmp_path / "store"), device="cpu")
    assert report.computed == 2 and {e.split for e in report.entries} == {"train"}
    loaded = featstore.open(str(tmp_path / "flat"), store=str(tmp_path / "store")).load("layer_a", "raw")
    np.testing.assert_array_equal(loaded.numpy(), a)


def test_parquet_glob_is_one_split(tmp_path):
    (tmp_path / "g").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"w": pa.array(list(matrices(4, (2, 2), i).reshape(4, 4)), pa.list_(pa.float32(), 4))}),
                       tmp_path / "g" / f"part-{i}.parquet")
    src = load_source(str(tmp_path / "g" / "part-*.parquet"))
    assert list(src.splits) == ["train"] and src.layers == ["w"] and src.label_column is None
    expected = np.concatenate([matrices(4, (2, 2), i).reshape(4, 4) for i in range(3)])
    np.testing.assert_array_equal(src.splits["train"].read("w"), expected)


def test_arrow_files_stream_and_file_format(tmp_path):
    values = matrices(6, (3, 3))
    ds = array2d_dataset(values)
    (tmp_path / "arr").mkdir()
    table = ds.data.table
    with pa.ipc.new_stream(str(tmp_path / "arr" / "train-0.arrow"), table.schema) as w:
        w.write_table(table)
    with pa.ipc.new_file(str(tmp_path / "arr" / "train-1.arrow"), table.schema) as w:
        w.write_table(table)
    src = load_source(str(tmp_path / "arr"))
    np.testing.assert_array_equal(src.splits["train"].read("layer_a"), np.concatenate([values, values]))


def test_layers_globs_choose_and_complain(tmp_path):
    ds, _, _ = _two_layer_dataset()
    ds.save_to_disk(str(tmp_path / "one"))
    assert load_source(str(tmp_path / "one"), layers=["*_b", "layer_*"]).layers == ["layer_b", "layer_a"]
    with pytest.raises(DatasetError, match=r"--layers 'attn\*' matches no column of '.*'; columns: layer_a, layer_b"):
        load_source(str(tmp_path / "one"), layers=["attn*"])
    with pytest.raises(DatasetError, match=r"--layers 'layer_a, layer_b' matches no column of '.*' \(several globs are "
                                           r"separate options: --layers layer_a --layers layer_b; in Python, a list\)"):
        load_source(str(tmp_path / "one"), layers=["layer_a, layer_b"])
    with pytest.raises(DatasetError, match=r"--layers 'Layer_a' matches no column of '.*' \(did you mean 'layer_a'\?\)"):
        load_source(str(tmp_path / "one"), layers=["Layer_a"])
    with pytest.raises(DatasetError, match=r"label column 'cls' not in dataset"):
        load_source(str(tmp_path / "one"), label_column="cls")
    with pytest.raises(DatasetError, match=r"'category\*' matches only 'category_label', the label column"):
        load_source(str(tmp_path / "one"), layers=["category*"])
    # a glob picks layer columns only ('*': every layer, not the scalar and text columns too); a name, any column
    assert load_source(str(tmp_path / "one"), layers=["*"]).layers == ["layer_a", "layer_b"]
    assert load_source(str(tmp_path / "one"), layers=["scalar", "*"]).layers == ["scalar", "layer_a", "layer_b"]
    with pytest.raises(DatasetError, match=r"^--layers 'n\*' matches only name of .*, which hold no numeric tensors "
                                           r".*; layer columns: layer_a, layer_b$"):
        load_source(str(tmp_path / "one"), layers=["n*"])


def test_a_column_whose_name_has_glob_characters_is_chosen_by_its_own_name(tmp_path):
    """`w[0]` as a glob matches only `w0`; adapters name columns `w[0]` or `a*b` too."""
    names = ["w[0]", "a*b", "w0", "axb"]
    datasets.Dataset.from_dict({n: matrices(4, seed=i) for i, n in enumerate(names)}).save_to_disk(str(tmp_path / "d"))
    assert load_source(str(tmp_path / "d"), layers=["w[0]"]).layers == ["w[0]", "w0"]
    assert load_source(str(tmp_path / "d"), layers=["a*b"]).layers == ["a*b", "axb"]
    assert load_source(str(tmp_path / "d"), layers=["w[[]0]"]).layers == ["w[0]"]  # glob.escape'd: itself alone
    with pytest.raises(DatasetError, match=r"--layers 'W\*' matches no column"):  # case-sensitive everywhere
        load_source(str(tmp_path / "d"), layers=["W*"])


def test_column_lists_in_errors_stay_short(tmp_path):
    wide = {f"layer_{i:03d}": [[[1.0]]] for i in range(129)}
    datasets.Dataset.from_dict(wide).save_to_disk(str(tmp_path / "wide"))
    with pytest.raises(DatasetError, match=r"columns: layer_000, .*, layer_011, \.\.\. \(129 in all\)$"):
        load_source(str(tmp_path / "wide"), layers=["attn*"])


def test_no_layer_columns(tmp_path):
    datasets.Dataset.from_dict({"t": ["a"], "v": [1.0]}).save_to_disk(str(tmp_path / "flat"))
    with pytest.raises(DatasetError, match=r"no layer columns found.*Choose some with --layers"):
        load_source(str(tmp_path / "flat"))
    flat = datasets.Dataset.from_dict({"t": ["a"], "v": [1.0]})  # named by its fingerprint, not its repr's lines
    with pytest.raises(DatasetError, match=rf"^no layer columns found in 'fingerprint:{flat._fingerprint}' "):
        load_source(flat)
    with pytest.raises(DatasetError, match=rf"^label column 'cls' not in dataset 'fingerprint:{flat._fingerprint}';"):
        load_source(flat, label_column="cls")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    # HF_HUB_OFFLINE is read at import time; the CLI test checks the real environment variable.
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match=r"'someone/adapters' is not a preset .* Hugging Face Hub failed"):
        load_source("someone/adapters")
    with pytest.raises(DatasetError, match=r"Hub failed: .*\. Check the name \(did you mean the preset 'sanity'\?\), "):
        load_source("santy")  # a Hub id all the same: asked, then the near preset named
    with pytest.raises(DatasetError, match=r"Hub failed: .*\. Check the name, the network"):
        load_source("imdb")


@pytest.mark.parametrize(("name", "preset"), [("1K", "1k"), ("Sanity", "sanity"), ("SANITY_CHECK_DATASET",
                                                                                 "sanity_check_dataset")])
def test_a_preset_name_in_other_case_is_not_looked_up_on_the_hub(name, preset, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("asked the Hub"))
    with pytest.raises(DatasetError, match=rf"^--dataset '{name}' is no preset: preset names are lower case, did you "
                                           rf"mean '{preset}'\?$"):
        load_source(name)


@pytest.mark.parametrize("name", ["./adapters_v2", "/no/such/dir", "runs/2026/adapters", "~/no_such_dir", "x.parquet"])
def test_a_path_that_is_not_there_is_not_looked_up_on_the_hub(name, monkeypatch):
    # the Hub would be asked (and retried for ~25 s offline) if these reached datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("asked the Hub"))
    with pytest.raises(DatasetError, match=r"no such file or directory \(nor a preset: sanity, 1k, 10k\)"):
        load_source(name)


def test_a_path_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"layer_a": pa.array([[1.0, 2.0]] * 3, pa.list_(pa.float32(), 2))}),
                   tmp_path / "data" / "train.parquet")
    source = load_source("~/data")
    assert list(source.splits) == ["train"] and source.layers == ["layer_a"]
    assert dataset_id("~/data") == str(tmp_path / "data")


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no .parquet or .arrow files"):
        load_source(str(tmp_path / "empty"))


def test_truncated_or_corrupt_files_are_named(tmp_path):
    """Not pyarrow's bare 'Expected to be able to read ...' as an unexpected error: the file, and
    what to do."""
    import featstore

    ds = array2d_dataset(matrices(40, (8, 8)))
    ds.save_to_disk(str(tmp_path / "saved"))
    [arrow] = (tmp_path / "saved").glob("*.arrow")
    os.truncate(arrow, arrow.stat().st_size // 2)
    hint = r"; the file is unreadable, truncated or not what its name says \(fix its permissions, or save"
    with pytest.raises(DatasetError, match=rf"cannot read .*{arrow.name}: .*{hint}"):
        featstore.build(str(tmp_path / "saved"), ["stats"], store=str(tmp_path / "s"))
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-0.parquet"))
    (tmp_path / "pq" / "train-1.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match=rf"cannot read .*train-1.parquet: .*{hint}"):
        featstore.build(str(tmp_path / "pq"), ["stats"], store=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()  # refused before a store was made


@pytest.mark.parametrize("labels, message", [
    ([True, False] * 4, r"label column 'category_label' holds bool values; labels must be class ids or names"),
    ([0.5, 1.0] * 4, r"label column 'category_label' holds 0.5 at row 0; labels must be class ids or names"),
    ([0.0, float("nan")] * 4, r"label column 'category_label' holds nan at row 1;"),
    (["cat", None] * 4, r"label column 'category_label' has no value at row 1; give every row a label"),
])
def test_labels_must_be_class_ids_never_truncated(tmp_path, labels, message):
    """Float labels were cast to int64 (0.5 stored as 0, silently); strings failed with advice
    for layer columns (--layers). Whole-number floats are class ids."""
    import featstore

    values = {"w": matrices(8, (2, 2))}
    datasets.Dataset.from_dict({**values, "category_label": labels}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DatasetError, match=r"^split train: " + message + r".*(class_encode_column|--label-column)"):
        featstore.build(str(tmp_path / "bad"), ["stats"], store=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()  # refused before anything was written
    datasets.Dataset.from_dict({**values, "category_label": [2.0, 0.0] * 4}).save_to_disk(str(tmp_path / "ok"))
    featstore.build(str(tmp_path / "ok"), ["stats"], store=str(tmp_path / "s"))
    assert featstore.open(str(tmp_path / "ok"), store=str(tmp_path / "s")).labels().tolist() == [2, 0] * 4


def test_text_labels_are_class_ids_in_the_sorted_order_of_every_splits_values(tmp_path):
    """Text labels ("code", "math") were refused, so the dataset had to be encoded and saved again.
    Each value is numbered by its place among the sorted values of all splits, so train and test
    agree (DatasetDict.class_encode_column numbers each split's own); a class new in one split
    renumbers both."""
    from click.testing import CliRunner

    import featstore
    from featstore.cli import main
    from featstore.torch import FeatureDataset

    path, store = str(tmp_path / "d"), str(tmp_path / "s")

    def save(test_labels):
        datasets.DatasetDict({
            "train": datasets.Dataset.from_dict({"w": matrices(4, (2, 2)), "category_label": ["math", "code"] * 2}),
            "test": datasets.Dataset.from_dict({"w": matrices(3, (2, 2), seed=1), "category_label": test_labels}),
        }).save_to_disk(path)

    save(["poetry", "math", "poetry"])
    assert featstore.build(path, ["stats"], store=store).labels == ["test", "train"]
    with featstore.open(path, store=store) as fs:
        assert fs.label_names == ["code", "math", "poetry"]
        assert fs.labels("train").tolist() == [1, 0, 1, 0] and fs.labels("test").tolist() == [2, 1, 2]
    assert featstore.status(path, store=store).fresh
    listed = CliRunner().invoke(main, ["ls", "-f", "labels", "--store", store]).output.splitlines()
    assert [line.split()[1:6] for line in listed[1:3]] == [["test", "category_label", "labels", "3", "int64"],
                                                           ["train", "category_label", "labels", "4", "int64"]]
    save(["poetry", "art", "poetry"])  # "art" sorts first: every id moves
    stale = {(s.split, s.state, s.reason) for s in featstore.status(path, store=store).slots if s.featurizer == "labels"}
    assert stale == {("train", "stale", "labels changed"), ("test", "stale", "labels changed")}
    relabelled = featstore.build(path, ["stats"], store=store)
    assert (relabelled.computed, relabelled.labels, relabelled.bytes_written) == (0, ["test", "train"], 7 * 8)
    assert featstore.build(path, ["stats"], store=store).labels == []
    with featstore.open(path, store=store) as fs:
        assert fs.label_names == ["art", "code", "math", "poetry"]
        assert fs.labels("train").tolist() == [2, 1, 2, 1] and fs.labels("test").tolist() == [3, 0, 3]
    test_set = FeatureDataset(path, split="test", store=store)
    assert [test_set.label_names[int(test_set[i][1])] for i in range(3)] == ["poetry", "art", "poetry"]
    # the same from parquet files, and from a Dataset object (shuffled: an indices mapping)
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_dict({"w": matrices(4, (2, 2)), "category_label": ["b", "a", "b", "c"]}).to_parquet(
        str(tmp_path / "pq" / "train.parquet"))
    featstore.build(str(tmp_path / "pq"), ["stats"], store=store)
    assert featstore.open(str(tmp_path / "pq"), store=store).labels().tolist() == [1, 0, 1, 2]
    shuffled = datasets.Dataset.from_dict({"w": matrices(4, (2, 2)), "category_label": list("bacd")}).select([3, 0, 1])
    featstore.build(shuffled, ["stats"], store=store)
    with featstore.open(shuffled, store=store) as fs:
        assert fs.labels().tolist() == [2, 1, 0] and fs.label_names == ["a", "b", "d"]
    # numbers in the values count by value, as in fs.layers: class_2 before class_10
    numbered = datasets.Dataset.from_dict({"w": matrices(4, (2, 2)), "category_label": ["c10", "c2", "c1", "c02"]})
    featstore.build(numbered, ["stats"], store=store)
    with featstore.open(numbered, store=store) as fs:
        assert fs.label_names == ["c1", "c02", "c2", "c10"] and fs.labels().tolist() == [3, 2, 0, 1]


def test_labels_of_text_in_one_split_and_numbers_in_another_are_refused(tmp_path):
    import featstore

    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"w": matrices(2, (2, 2)), "category_label": ["a", "b"]}),
        "test": datasets.Dataset.from_dict({"w": matrices(2, (2, 2)), "category_label": [0, 1]}),
    }).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DatasetError, match=r"label column 'category_label' holds int64 values in split 'test' but "
                                           r"text in split 'train'; give it one type in every split"):
        featstore.build(str(tmp_path / "d"), ["stats"], store=str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_a_split_without_the_label_column_has_features_and_no_labels(tmp_path, monkeypatch):
    """An unlabelled test split: the label column was looked for in the first split only, and the
    test split then failed with a bare KeyError from the Arrow schema. Its features are built;
    asking for its labels says it has none; status and lockfiles agree."""
    import featstore
    from featstore import NotFoundError
    from featstore.freshness import lock_bytes

    w = matrices(4, (2, 2))
    path, store = str(tmp_path / "d"), str(tmp_path / "s")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"w": w, "category_label": [0, 1, 0, 1]}),
                          "test": datasets.Dataset.from_dict({"w": matrices(4, (2, 2), seed=1)})}).save_to_disk(path)
    assert featstore.build(path, ["stats"], store=store).computed == 2
    fs = featstore.open(path, store=store)
    assert fs.splits == ["test", "train"] and fs.labels("train").tolist() == [0, 1, 0, 1]
    with pytest.raises(NotFoundError, match=r"^split test of '.*/d' has no labels: its data has no column "
                                            r"'category_label'$"):
        fs.labels("test")
    report = featstore.status(path, store=store)
    assert report.fresh and [(s.split, s.featurizer) for s in report.slots if s.featurizer == "labels"] == [
        ("train", "labels")]
    lock = featstore.lock(path, store=store)
    assert set(lock["labels"]["entries"]) == {"train"}
    (tmp_path / "f.lock").write_bytes(lock_bytes(lock))
    assert featstore.status_against_lock(str(tmp_path / "f.lock")).fresh


def _bad_datasets(tmp_path) -> dict:
    """Datasets featstore cannot open, each made on disk (or in memory), with what its error says."""
    ds = _two_layer_dataset()[0]
    ds.save_to_disk(str(tmp_path / "torn"))
    (tmp_path / "torn" / "state.json").write_text('{"_data_files": [')
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "train.csv").write_text("a,b\n1,2\n")
    (tmp_path / "mixed").mkdir()
    ds.to_parquet(str(tmp_path / "mixed" / "train-0.parquet"))
    ds.save_to_disk(str(tmp_path / "arrow"))
    arrow = next((tmp_path / "arrow").glob("*.arrow"))
    os.rename(arrow, tmp_path / "mixed" / "train-1.arrow")
    (tmp_path / "notes.arrow").write_text("not arrow at all")
    uneven = datasets.DatasetDict({"train": ds, "test": ds.remove_columns("layer_b")})
    remote = f"featstore-test-{tmp_path.name}"
    fsspec.filesystem("memory").pipe(f"/{remote}/torn/state.json", b'{"_data_files": [')
    return {
        str(tmp_path / "nothing-*.parquet"): r"--dataset '.*nothing-\*.parquet' matches no \.parquet or \.arrow file",
        str(tmp_path / "torn"): r"torn is not a readable save_to_disk directory \(JSONDecodeError.*\); re-save it",
        str(tmp_path / "csv"): r"no \.parquet or \.arrow files found in .*csv",
        str(tmp_path / "mixed"): r"split 'train' mixes file kinds \['\.arrow', '\.parquet'\]; use one of",
        str(tmp_path / "notes.arrow"): r"notes\.arrow is not an Arrow IPC stream or file",
        f"memory://{remote}/absent": rf"--dataset 'memory://{remote}/absent': expected a save_to_disk directory or "
                                     r"\.parquet files there",
        f"memory://{remote}/torn": rf"cannot read --dataset 'memory://{remote}/torn': JSONDecodeError",
        "list": r"cannot use a list as a dataset; pass a name, a path or a datasets\.Dataset / DatasetDict",
        "uneven": r"split 'test' of '.*' lacks columns layer_b that split 'train' has; choose the layers every "
                  r"split has with --layers",
    }, uneven


def test_datasets_it_cannot_open_are_errors_that_name_the_file_and_the_fix(tmp_path):
    cases, uneven = _bad_datasets(tmp_path)
    for dataset, message in cases.items():
        given = {"list": [[1.0]], "uneven": uneven}.get(dataset, dataset)
        with pytest.raises(DatasetError, match=message):
            load_source(given)


def _parquet_files(tmp_path, columns: list[pa.Array], row_group_size: int) -> list[str]:
    """One parquet file of column `w` per array of `columns`, in row groups of `row_group_size`."""
    (tmp_path / "pq").mkdir()
    files = [str(tmp_path / "pq" / f"part-{i}.parquet") for i in range(len(columns))]
    for f, column in zip(files, columns):
        pq.write_table(pa.table({"w": column}), f, row_group_size=row_group_size)
    return files


def test_a_parquet_column_is_decoded_in_batches_across_row_groups_and_files(tmp_path, monkeypatch):
    from featstore.columns import ColumnLayout
    from featstore.digest_cache import column_digest
    from featstore.keys import array_digest
    from featstore.split import Split

    monkeypatch.setattr("featstore.split.PARQUET_BATCH_VALUES", 7 * 9)  # batches of 7 rows of 3x3
    values = matrices(50, (3, 3))
    split = Split.from_parquet(_parquet_files(tmp_path, [list_column(values[:30]), list_column(values[30:])], 12), None)
    batches = []
    real = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", lambda self, *a, **k: (
        batches.append(b.num_rows) or b for b in real(self, *a, **k)))
    layout, parts = split.parts("w")
    assert layout == ColumnLayout(50, (3, 3), np.dtype(np.float32)) and batches == [7] * 4 + [2] + [7] * 2 + [6]
    np.testing.assert_array_equal(parts[0], values)
    assert column_digest(split, "w").digest == array_digest(values)
    batches.clear()
    assert split.layout("w") == layout and len(batches) == 8  # decoded once to check it, and hashed then
    assert column_digest(split, "w").digest == array_digest(values) and len(batches) == 8  # not decoded again
    assert split.checked_digests("w") is None  # taken once
    split.layout("w")
    assert split.checked_digests("w").segments == [array_digest(values[:30]), array_digest(values[30:])]
    assert split.file_digest(1, "w") == array_digest(values[30:])
    blocks = list(split.blocks("w", 11, start=4))
    assert [begin for begin, _ in blocks] == [4, 15, 26, 37, 48] and [len(b) for _, b in blocks] == [11] * 4 + [2]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), values[4:])


def test_a_bad_value_in_a_later_parquet_batch_names_its_row_of_the_split(tmp_path, monkeypatch):
    from featstore import ColumnError
    from featstore.split import Split

    monkeypatch.setattr("featstore.split.PARQUET_BATCH_VALUES", 7 * 9)
    values = matrices(30, (3, 3))
    nested = pa.list_(pa.list_(pa.float32()))
    with_null = pa.array([None if i == 7 else v.tolist() for i, v in enumerate(values[20:])], nested)
    split = Split.from_parquet(_parquet_files(tmp_path, [list_column(values[:20]), with_null], 12), None)
    with pytest.raises(ColumnError, match=r"^column 'w' has a null at row 27;"):
        split.layout("w")
    (tmp_path / "pq").rename(tmp_path / "with-null")
    split = Split.from_parquet(_parquet_files(tmp_path, [list_column(values[:20]), list_column(values[20:, :2, :2])],
                                              12), None)
    with pytest.raises(ColumnError, match=r"^column 'w' is ragged: row 20 has values of shape \(2, 2\) \(float32\) "
                                          r"where earlier rows have \(3, 3\) \(float32\)"):
        split.parts("w")
    with pytest.raises(ColumnError, match=r"^column 'x' not found; columns: w$"):
        split.layout("x")


def test_a_parquet_file_rewritten_after_its_split_was_opened_is_refused_when_read(tmp_path):
    from featstore.keys import array_digest
    from featstore.split import Split

    values = matrices(20, (3, 3))
    files = _parquet_files(tmp_path, [list_column(values)], 8)
    split = Split.from_parquet(files, None)
    split.layout("w")
    digests = split.checked_digests("w")
    pq.write_table(pa.table({"w": list_column(values * 2)}), files[0], row_group_size=8)  # same rows, other values
    with pytest.raises(DatasetError, match=rf"^{files[0]} changed while featstore read it; run it again once"):
        split.parts("w")  # the features of these values would be filed under the digest of those
    reopened = Split.from_parquet(files, None)
    reopened.layout("w")
    assert reopened.checked_digests("w").digest == array_digest(values * 2) != digests.digest


READS = """
import sys
from featstore.sources import load_source
split = load_source(sys.argv[1]).splits["train"]
split.layout("w"), split.parts("w"), split.labels("category_label")
"""


def test_reading_parquet_leaves_no_pyarrow_thread_to_abort_the_exit(tmp_path):
    """`pq.read_table` on pyarrow's thread pool, of a file with `datasets`' Array2D columns (an
    Arrow extension type `datasets` registers), aborted the interpreter at exit in about half of
    the runs (pyarrow 26: "terminate called without an active exception", exit 134): a build that
    succeeded would have failed its CI job. Three runs here: a 1/8 chance of missing a regression
    of that rate."""
    import subprocess
    import sys

    (tmp_path / "pq").mkdir()
    features = datasets.Features({"w": datasets.Array2D((16, 16), "float32"), "category_label": datasets.Value("string")})
    datasets.Dataset.from_dict({"w": matrices(64, (16, 16)), "category_label": ["a", "b"] * 32},
                               features=features).to_parquet(str(tmp_path / "pq" / "train.parquet"))
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", READS, str(tmp_path / "pq")], capture_output=True, text=True,
                             check=False)
        assert (run.returncode, run.stderr[-500:]) == (0, "")
