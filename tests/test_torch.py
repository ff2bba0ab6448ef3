"""The loading API and the PyTorch integration, on real stores."""

import os
import re
import shutil

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import featstore
from featstore import presets
from featstore.sources import load_source
from featstore.torch import FeatureDataset, load_split


@pytest.fixture
def built(sanity_dir, store_dir):
    featstore.build("sanity", ["raw", "stats", "svd:k=4"], store=store_dir)
    return store_dir


def test_load_rows_dtype_and_many(built):
    fs = featstore.open("sanity", store=built)
    full = fs.load("layer_001", "raw")
    column = load_source("sanity").splits["train"].read("layer_001")
    np.testing.assert_array_equal(full.numpy(), column)
    torch.testing.assert_close(fs.load("layer_001", "raw", rows=slice(5, 17)), full[5:17], rtol=0, atol=0)
    assert fs.load("layer_001", "stats", dtype=torch.float64).dtype == torch.float64
    many = fs.load_many(["layer_003", "layer_001"], "svd:k=4", split="test")
    assert list(many) == ["layer_003", "layer_001"]
    stacked = fs.load_many(["layer_003", "layer_001"], "svd:k=4", split="test", stack=True)
    assert stacked.shape == (2, *many["layer_003"].shape)
    torch.testing.assert_close(stacked[1], fs.load("layer_001", "svd:k=4", split="test"), rtol=0, atol=0)
    assert torch.equal(fs.labels("train", rows=slice(0, 4)), fs.labels("train")[:4])
    with pytest.raises(featstore.NotFoundError, match=r"no layer 'nope'"):
        fs.load_many(["layer_000", "nope"], "raw")
    for load in (lambda rows: fs.load("layer_001", "raw", rows=rows), lambda rows: fs.labels("train", rows=rows),
                 lambda rows: fs.load_many(["layer_001"], "raw", rows=rows, stack=True)):
        with pytest.raises(TypeError, match=r"rows must be a slice such as slice\(0, 100\).*not \[1, 2\]"):
            load([1, 2])
        with pytest.raises(ValueError, match=r"contiguous slice"):
            load(slice(0, 10, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_load_to_the_gpu(built, monkeypatch):
    featstore.build("sanity", ["stats:dtype=bfloat16", "stats:dtype=float16"], store=built)
    fs = featstore.open("sanity", store=built)
    for pin in (1 << 40, 0):  # small loads copy from ordinary memory, large ones through pinned memory
        monkeypatch.setattr(featstore.featureset, "PIN_BYTES", pin)
        on_gpu = fs.load("layer_002", "svd:k=4", device="cuda", rows=slice(3, 30))
        assert on_gpu.is_cuda
        torch.testing.assert_close(on_gpu.cpu(), fs.load("layer_002", "svd:k=4")[3:30], rtol=0, atol=0)
        stacked = fs.load_many(["layer_001", "layer_002"], "raw", device="cuda", stack=True)
        torch.testing.assert_close(stacked[1].cpu(), fs.load("layer_002", "raw"), rtol=0, atol=0)
        for spec in ("stats:dtype=bfloat16", "stats:dtype=float16"):  # pinned buffers of 16-bit features too
            half = fs.load_many(["layer_001", "layer_002"], spec, device="cuda", stack=True)
            assert half.dtype == getattr(torch, spec.split("=")[1]) and half.is_cuda
            torch.testing.assert_close(half[1].cpu(), fs.load("layer_002", spec), rtol=0, atol=0)
            torch.testing.assert_close(fs.load("layer_002", spec, device="cuda").cpu(), half[1].cpu(), rtol=0, atol=0)


def test_require_fresh_refuses_features_of_edited_data(built, sanity_dir):
    featstore.open("sanity", store=built, require_fresh=True).close()  # fresh: fine
    dd = datasets.load_from_disk(str(sanity_dir), keep_in_memory=True)
    train = dd["train"].with_format("numpy")[:]
    train["layer_005"][0, 0, 0] += 1
    dd["train"] = datasets.Dataset.from_dict(train, features=dd["train"].features)
    dd.save_to_disk(str(sanity_dir) + ".new")
    shutil.rmtree(sanity_dir)
    os.rename(str(sanity_dir) + ".new", sanity_dir)
    with pytest.raises(featstore.StaleError, match=r"3 catalogued features .* not fresh .*train/layer_005/raw: stale, "
                                                   r"input bytes changed.*; rebuild them: featstore build --dataset "
                                                   rf"sanity --featurizer raw --featurizer stats --featurizer svd:k=4 "
                                                   rf"--store {re.escape(built)}$"):
        featstore.open("sanity", store=built, require_fresh=True)
    featstore.open("sanity", store=built).close()  # without require_fresh it still serves what it has
    featstore.build("sanity", ["raw", "stats", "svd:k=4"], store=built)
    featstore.open("sanity", store=built, require_fresh=True).close()


def test_feature_dataset_with_dataloader_workers(built):
    ds = FeatureDataset("sanity", layers=["layer_002", "layer_003"], featurizers=["stats", "svd:k=4"], store=built,
                        flatten=True)
    assert len(ds) == presets.get("sanity").rows - len(load_source("sanity").splits["test"].read("layer_000"))
    assert repr(ds) == "FeatureDataset('sanity', split='train', rows=256, columns=4, flatten=True)"
    loader = DataLoader(ds, batch_size=8, shuffle=False, num_workers=2)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    fs = featstore.open("sanity", store=built)
    expected = torch.cat([fs.load(layer, f).reshape(len(ds), -1) for layer in ("layer_002", "layer_003")
                          for f in ("stats", "svd:k=4")], 1)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    assert torch.equal(y, fs.labels("train"))
    assert len(os.listdir(os.path.join(built, "leases"))) == 2  # ours and fs's: the workers dropped none
    features, label = FeatureDataset("sanity", featurizers=["raw"], store=built)[3]
    assert set(features) == {(f"layer_{i:03d}", "raw") for i in range(8)} and label.dtype == torch.int64


def test_feature_dataset_without_labels_batches_its_features_alone(tmp_path, store_dir):
    values = np.random.default_rng(0).standard_normal((20, 4, 4), dtype=np.float32)
    datasets.Dataset.from_dict({"m": values}).save_to_disk(str(tmp_path / "d"))
    featstore.build(str(tmp_path / "d"), ["stats", "raw"], store=store_dir)
    ds = FeatureDataset(str(tmp_path / "d"), featurizers=["raw"], store=store_dir)
    batches = list(DataLoader(ds, batch_size=8))
    assert [tuple(b[("m", "raw")].shape) for b in batches] == [(8, 4, 4), (8, 4, 4), (4, 4, 4)]
    torch.testing.assert_close(torch.cat([b[("m", "raw")] for b in batches]), torch.from_numpy(values), rtol=0, atol=0)
    flat = FeatureDataset(str(tmp_path / "d"), featurizers=["stats"], store=store_dir, flatten=True)
    assert next(iter(DataLoader(flat, batch_size=5))).shape == (5, 4)


def test_feature_dataset_names_a_missing_feature(built):
    """A DataLoader worker reading a removed entry says which feature it is, as `load` does."""
    ds = FeatureDataset("sanity", layers=["layer_002"], featurizers=["svd:k=4"], store=built)
    key = featstore.open("sanity", store=built).row("layer_002", "svd:k=4").key
    shutil.rmtree(os.path.join(built, "entries", key[:2], key))
    with pytest.raises(featstore.StoreError, match=r"^svd:k=4 features of 'layer_002' \(split train\) of 'sanity': "
                                                   rf"entry {key} is missing .*\(featstore build --dataset sanity"):
        ds[0]


def test_load_split_returns_a_whole_split(built):
    features, labels = load_split("sanity", layers=["layer_000"], store=built, split="test")
    assert set(features) == {("layer_000", f) for f in ("raw", "stats", "svd:k=4")}
    assert len(labels) == len(features[("layer_000", "raw")])


def test_feature_dataset_and_load_split_take_an_open_feature_set(built):
    """A training script opens the store once (`featstore.open(..., require_fresh=True)`) and
    passes the view on: it was refused as 'cannot use a FeatureSet as a dataset'."""
    fs = featstore.open("sanity", store=built, require_fresh=True)
    leases = os.listdir(os.path.join(built, "leases"))
    ds = FeatureDataset(fs, layers="layer_00[12]", featurizers="stats", flatten=True)
    x, y = next(iter(DataLoader(ds, batch_size=len(ds), num_workers=1)))
    torch.testing.assert_close(x, torch.cat([fs.load("layer_001", "stats"), fs.load("layer_002", "stats")], 1),
                               rtol=0, atol=0)
    assert torch.equal(y, fs.labels("train"))
    features, labels = load_split(fs, layers="layer_000", featurizers="raw", split="test")
    assert torch.equal(features[("layer_000", "raw")], fs.load("layer_000", "raw", "test"))
    assert torch.equal(labels, fs.labels("test"))
    assert os.listdir(os.path.join(built, "leases")) == leases  # fs's own, still held: load_split left it open
    with pytest.raises(ValueError, match=r"already has its store .*: drop store="):
        load_split(fs, store=built)


def test_load_many_stacks_reduced_precision_and_row_slices(sanity_dir, store_dir):
    featstore.build("sanity", ["stats:dtype=bfloat16"], store=store_dir)
    fs = featstore.open("sanity", store=store_dir)
    layers = ["layer_004", "layer_000", "layer_002"]
    stacked = fs.load_many(layers, "stats:dtype=bfloat16", rows=slice(10, 50), stack=True)
    assert stacked.dtype == torch.bfloat16 and stacked.shape == (3, 40, 4)
    expected = torch.stack([fs.load(layer, "stats:dtype=bfloat16")[10:50] for layer in layers])
    assert torch.equal(stacked, expected)
    assert fs.load_many(layers, "stats:dtype=bfloat16", stack=True, dtype=torch.float32).dtype == torch.float32


def test_layers_come_in_the_numeric_order_of_their_names(tmp_path, store_dir):
    """Plain sorting put `layers.10` before `layers.2`: a probe's accuracy plotted over fs.layers
    was out of depth order for every model whose module names number their layers."""
    from click.testing import CliRunner

    from featstore.cli import main

    names = ["model.layers.10.mlp", "model.layers.2.mlp", "model.layers.1.attn", "model.layers.1.mlp", "embed"]
    data = {name: np.full((4, 2, 2), i, np.float32) for i, name in enumerate(names)}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "d"))
    featstore.build(str(tmp_path / "d"), ["stats"], store=store_dir)
    in_order = ["embed", "model.layers.1.attn", "model.layers.1.mlp", "model.layers.2.mlp", "model.layers.10.mlp"]
    with featstore.open(str(tmp_path / "d"), store=store_dir) as fs:
        assert fs.layers == in_order
        stacked = fs.load_many("model.layers.*.mlp", "stats", stack=True)
        assert stacked[:, 0, 0].tolist() == [names.index(n) for n in in_order[2:]]  # the mean: the column's index
    listed = CliRunner().invoke(main, ["ls", "--store", store_dir]).output.splitlines()[1:-1]
    assert [line.split()[2] for line in listed] == in_order


def test_layers_may_be_globs_as_on_the_command_line(sanity_dir, store_dir):
    featstore.build("sanity", ["stats"], store=store_dir)
    with featstore.open("sanity", store=store_dir) as fs:
        loaded = fs.load_many(["layer_00[5-7]", "layer_001"], "stats", split="test")
        assert list(loaded) == ["layer_005", "layer_006", "layer_007", "layer_001"]
        assert all(torch.equal(t, fs.load(layer, "stats", split="test")) for layer, t in loaded.items())
        assert fs.load_many("layer_*", "stats", stack=True).shape == (8, 256, 4)
        with pytest.raises(featstore.NotFoundError, match=r"no layer of 'sanity' matches 'layer_1\*'; layers: layer_000"):
            fs.load_many("layer_1*", "stats")
    features, _ = load_split("sanity", layers="layer_00?", featurizers="stats", store=store_dir, split="test")
    assert len(features) == 8
    assert len(FeatureDataset("sanity", layers=["layer_00[01]"], store=store_dir, flatten=True)[0][0]) == 2 * 4
