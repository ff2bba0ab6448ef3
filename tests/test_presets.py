import datasets
import numpy as np
import pytest

from featstore import presets, read_column
from featstore.keys import array_digest


def test_sanity_layout(_sanity_master):
    dd = datasets.load_from_disk(str(_sanity_master))
    assert set(dd) == {"train", "test"}
    assert (dd["train"].num_rows, dd["test"].num_rows) == (256, 64)  # 80/20 of 320
    features = dd["train"].features
    assert list(features) == [f"layer_{i:03d}" for i in range(8)] + ["category_label"]
    assert isinstance(features["layer_000"], datasets.Array2D) and features["layer_000"].shape == (16, 16)
    assert features["category_label"].num_classes == 10
    layer = read_column(dd["train"], "layer_005")
    assert layer.shape == (256, 16, 16) and layer.dtype == np.float32
    y = np.concatenate([read_column(dd[s], "category_label") for s in ("train", "test")])
    np.testing.assert_array_equal(np.bincount(y), [32] * 10)


def test_generation_is_deterministic(_sanity_master, tmp_path):
    again = datasets.load_from_disk(str(presets.make("sanity_check_dataset", tmp_path / "again")))
    first = datasets.load_from_disk(str(_sanity_master))
    for split in ("train", "test"):
        for col in first[split].column_names:
            assert array_digest(read_column(again[split], col)) == array_digest(read_column(first[split], col))


def test_matrices_are_rank_4_deltas():
    p = presets.Preset("t", rows=40, layers=4, dim=32, seed=3)
    block = presets.layer_block(p, 1, 0, 40, presets.labels(p)[:40])
    s = np.linalg.svd(block.astype(np.float64), compute_uv=False)
    assert (s[:, 3] > 4 * s[:, 4]).all()  # four real singular values, then noise


def _nearest_centroid_accuracy(p: presets.Preset, layer: int) -> float:
    y = presets.labels(p)
    x = np.concatenate([presets.layer_block(p, layer, a, min(a + presets.BLOCK_ROWS, p.rows), y[a:a + presets.BLOCK_ROWS])
                        for a in range(0, p.rows, presets.BLOCK_ROWS)])
    f = np.log(np.linalg.svd(x.astype(np.float64), compute_uv=False)[:, :4])
    train, test = slice(0, 600), slice(600, None)
    centroids = np.stack([f[train][y[train] == c].mean(0) for c in range(presets.N_CLASSES)])
    predicted = np.argmin(((f[test, None, :] - centroids[None]) ** 2).sum(-1), 1)
    return float((predicted == y[test]).mean())


def test_category_lives_in_the_signal_layers_only():
    p = presets.Preset("t", rows=800, layers=16, dim=16, seed=7)
    assert presets.signal_layers(16) == [4, 5, 6, 7]
    assert presets.signal_layers(128) == list(range(32, 64))
    assert _nearest_centroid_accuracy(p, 5) > 0.95
    assert _nearest_centroid_accuracy(p, 12) < 0.25  # chance is 0.1


def test_unknown_preset():
    with pytest.raises(Exception, match="unknown preset 'big'"):
        presets.make("big", "/nonexistent/never")


def test_a_full_disk_is_named_before_and_during_generation(tmp_path, monkeypatch):
    import errno
    from collections import namedtuple

    from featstore.errors import DatasetError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(presets.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 5 * 10**6))
    with pytest.raises(DatasetError, match=r"generating preset '10k' needs about 41.9 GB free in .* while it runs "
                                           r"\(21.0 GB once done\), and 5.0 MB are free; generate it elsewhere"):
        presets.make("10k", tmp_path / "10k")  # at once, not after minutes of generating
    monkeypatch.undo()

    def fills_the_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(presets, "matrices_to_arrow", fills_the_disk)
    with pytest.raises(DatasetError, match=r"cannot generate preset 'sanity' in .*: No space left on device; "
                                           r"generate it elsewhere \(featstore datasets make sanity --out DIR"):
        presets.make("sanity", tmp_path / "sanity")
    assert list(tmp_path.iterdir()) == []  # no half dataset, no work folder
