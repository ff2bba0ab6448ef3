"""What one compute call covers: a column over grouping.BLOCK_BYTES is copied out and computed a
block of rows at a time, with the entries (and errors) of a call over the whole column."""

import os
import shutil
import subprocess
import sys

import datasets
import pytest
import torch
from conftest import saved_layers_dataset

import featstore
from featstore import FeaturizerError

ROWS, DIM, BLOCK = 37, 8, 5
SPECS = ["raw", "stats", "svd:k=4", "spectral", "norms", "randproj:dim=16", "stats:dtype=bfloat16"]
_calls: list[int] = []


@featstore.featurizer("test_records_its_rows", version="1", output_shape=lambda shape: (1,))
def _records_its_rows(x):
    _calls.append(len(x))
    return x.mean((1, 2))[:, None]


@featstore.featurizer("test_whole_column", version="1", per_row=False, output_shape=lambda shape: (1,))
def _whole_column(x):
    _calls.append(len(x))
    return (x - x.mean(0)).mean((1, 2))[:, None]


@featstore.featurizer("test_refuses_nonfinite_rows", version="1", output_shape=lambda shape: (1,))
def _refuses_nonfinite_rows(x):
    if not torch.isfinite(x).all():
        raise ValueError("non-finite")
    return x.mean((1, 2))[:, None]


@pytest.fixture
def blocks_of_5_rows(monkeypatch):
    monkeypatch.setattr("featstore.grouping.BLOCK_BYTES", BLOCK * DIM * DIM * 4 + 3)


def _same_entries(path, a, b, specs):
    """Stores `a` and `b` hold the same entries of `specs`, to float32 rounding (a matmul's sums may
    be ordered by its number of rows), or to a 16-bit dtype's."""
    with featstore.open(path, store=a) as fa, featstore.open(path, store=b) as fb:
        rows = [r for r in fa.catalog.rows if r.featurizer in specs]
        assert rows and {(r.layer, r.featurizer, r.split) for r in rows} == \
               {(r.layer, r.featurizer, r.split) for r in fb.catalog.rows if r.featurizer in specs}
        for r in rows:
            x, y = (f.load(r.layer, r.featurizer, split=r.split).double() for f in (fa, fb))
            rtol = 1e-5 if r.dtype == "float32" else 1e-2
            torch.testing.assert_close(y, x, rtol=rtol, atol=rtol * float(x.abs().max()))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_a_column_over_block_bytes_is_computed_a_block_at_a_time_into_the_same_entries(tmp_path, device, monkeypatch):
    path = str(tmp_path / "d")
    saved_layers_dataset(path, layers=2, rows=ROWS, dim=DIM, num_shards=3)  # blocks across the files' edges
    whole = featstore.build(path, SPECS, store=str(tmp_path / "whole"), device=device)
    monkeypatch.setattr("featstore.grouping.BLOCK_BYTES", BLOCK * DIM * DIM * 4 + 3)
    _calls.clear()
    blocked = featstore.build(path, [*SPECS, "test_records_its_rows"], store=str(tmp_path / "blocked"), device=device)
    assert whole.computed == 14 and blocked.computed == 16
    assert sorted(_calls) == sorted([5] * 7 + [2] + [5] * 7 + [2])  # 7 blocks of 5 rows and one of 2, per column
    _same_entries(path, str(tmp_path / "whole"), str(tmp_path / "blocked"), SPECS)
    with featstore.open(path, store=str(tmp_path / "blocked")) as fs:
        x = fs.load("layer_001", "raw")
        torch.testing.assert_close(fs.load("layer_001", "test_records_its_rows"), x.mean((1, 2))[:, None])


def test_a_featurizer_over_the_whole_column_gets_all_of_it(tmp_path, blocks_of_5_rows):
    path = str(tmp_path / "d")
    saved_layers_dataset(path, layers=1, rows=ROWS, dim=DIM)
    _calls.clear()
    featstore.build(path, ["test_records_its_rows", "test_whole_column"], store=str(tmp_path / "s"), device="cpu")
    assert _calls == [ROWS, ROWS]  # not per-row: no blocks for any of the column's featurizers
    with featstore.open(path, store=str(tmp_path / "s")) as fs:
        x = torch.from_numpy(featstore.read_column(datasets.load_from_disk(path), "layer_000").copy())
        torch.testing.assert_close(fs.load("layer_000", "test_whole_column"), (x - x.mean(0)).mean((1, 2))[:, None])


def test_a_failure_in_a_later_block_names_the_rows_of_the_column(tmp_path, blocks_of_5_rows):
    path = str(tmp_path / "d")
    saved_layers_dataset(path, layers=2, rows=ROWS, dim=DIM, inf_at=(1, 17))
    store = str(tmp_path / "s")
    hint = r"; its input holds NaN or inf at row 17 \(fix or drop such rows"
    with pytest.raises(FeaturizerError, match=r"^featurizer stats:dtype=float16 on column 'layer_001' \(split train\) "
                                              r"returned NaN or inf at row 17; nothing of it was stored" + hint):
        featstore.build(path, ["stats:dtype=float16"], store=store, device="cpu")
    with pytest.raises(FeaturizerError, match=r"^featurizer test_refuses_nonfinite_rows on column 'layer_001' \(split "
                                              r"train, rows 15-19\) failed: ValueError\('non-finite'\)" + hint):
        featstore.build(path, ["test_refuses_nonfinite_rows"], store=store, device="cpu")
    with featstore.open(path, store=store) as fs:  # the column before it finished and stays
        assert {(r.layer, r.featurizer) for r in fs.catalog.rows} == {("layer_000", "stats:dtype=float16"),
                                                                      ("layer_000", "test_refuses_nonfinite_rows")}


def test_rows_appended_to_a_column_over_block_bytes_are_computed_in_blocks(tmp_path, blocks_of_5_rows):
    path, store = str(tmp_path / "d"), str(tmp_path / "s")
    saved_layers_dataset(path, layers=1, rows=20, dim=DIM)
    featstore.build(path, ["test_records_its_rows", "stats"], store=store, device="cpu")
    saved_layers_dataset(path, layers=1, rows=ROWS, dim=DIM)  # the same first 20 rows, and 17 more
    _calls.clear()
    report = featstore.build(path, ["test_records_its_rows", "stats"], store=store, device="cpu")
    assert report.reasons == {"17 rows appended to 20": 2}
    assert _calls == [5, 5, 5, 2]  # rows 20-24, 25-29, 30-34, 35-36
    cold = str(tmp_path / "cold")
    featstore.build(path, ["test_records_its_rows", "stats"], store=cold, device="cpu")
    _same_entries(path, store, cold, ["test_records_its_rows", "stats"])


def test_a_column_in_blocks_is_not_joined_with_its_layers_other_splits(sanity_dir, tmp_path, monkeypatch):
    """On a GPU a layer's splits are joined into one call (here on the CPU, in one lane); a column
    in blocks is computed on its own, and the split after it too."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("featstore.builder.joins", lambda device: True)
    monkeypatch.setattr("featstore.grouping.BLOCK_BYTES", 100 * 16 * 16 * 4)  # train's 256 rows: 3 blocks; test's 64
    _calls.clear()
    featstore.build("sanity", ["test_records_its_rows", "stats"], store=str(tmp_path / "blocked"), device="cpu")
    assert _calls == [100, 100, 56, 64] * 8
    monkeypatch.undo()
    featstore.build("sanity", ["test_records_its_rows", "stats"], store=str(tmp_path / "whole"), device="cpu")
    _same_entries("sanity", str(tmp_path / "whole"), str(tmp_path / "blocked"), ["test_records_its_rows", "stats"])


_scale = [1.0]


@featstore.featurizer("test_scaled_rows", version="1", output_shape=lambda shape: (1,))  # pinned: code unhashed
def _scaled_rows(x):
    _calls.append(len(x))
    return _scale[0] * x.mean((1, 2))[:, None]


def test_verify_recomputes_a_column_in_blocks(tmp_path, blocks_of_5_rows, monkeypatch):
    path, store = str(tmp_path / "d"), str(tmp_path / "s")
    saved_layers_dataset(path, layers=1, rows=ROWS, dim=DIM)
    featstore.build(path, ["test_scaled_rows"], store=store, device="cpu")
    _calls.clear()
    report = featstore.verify(store, recompute=1.0, progress=False)
    assert (report.recomputed, report.ok, _calls) == (1, True, [5] * 7 + [2])
    monkeypatch.setattr(sys.modules[__name__], "_scale", [1.001])  # its code changed under the pinned version
    report = featstore.verify(store, recompute=1.0, progress=False)
    expected = (f"{path} train/layer_000 test_scaled_rows: recomputed differs by 1.00e-03 of max |value| "
                "(if its code changed under a pinned version=, bump the version: the next build recomputes it)")
    assert not report.ok and list(report.mismatched.values()) == [expected]


CHILD = """
import re, resource, sys, tempfile
import featstore
from featstore import grouping

grouping.BLOCK_BYTES = 8 << 20  # blocks of 8 MB: room for a few of them

@featstore.featurizer("centred_mean", version="1", per_row=False, output_shape=lambda shape: (1,))
def centred_mean(x):
    return (x - x.mean(0)).mean((1, 2))[:, None]

specs = sys.argv[3].split(",")
with tempfile.TemporaryDirectory() as tmp:  # what a build costs without a large column: imports, threads, workspace
    featstore.build(sys.argv[1] + "-tiny", specs, store=tmp, device="cpu", progress=False)
used = int(re.search(r"VmData:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) << 10
limit = used + (128 << 20)
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))  # private memory; not the dataset's mapped files
try:
    report = featstore.build(sys.argv[1], specs, store=sys.argv[2], device="cpu", progress=False)
except featstore.FeatstoreError as e:
    sys.exit(str(e))
print(report.computed)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA and /proc are Linux's")
@pytest.mark.parametrize("files", ["arrow", "parquet"])
def test_a_column_larger_than_the_memory_a_build_may_use_is_built_in_blocks(tmp_path, monkeypatch, files):
    """A 256 MB column, and room for half of it beyond what a build of a smaller column used: per-row
    featurizers compute it in blocks (of 8 MB) into the entries an unlimited build makes, from
    Arrow files (mapped) or parquet (decoded: in batches, one row group of 256 MB here); a
    featurizer of the whole column cannot, and the error says so."""
    path = str(tmp_path / "d")
    # a first build of 4 blocks: the threads (8 MB of stack each) and pools a blocked build starts on every core
    for at, rows in ((path, 1000), (path + "-tiny", 128)):
        saved_layers_dataset(at, layers=1, rows=rows, dim=256)
        if files == "parquet":  # a directory of one train.parquet, in place of the save_to_disk one
            datasets.load_from_disk(at).to_parquet(at + ".parquet", batch_size=rows)
            shutil.rmtree(at)
            os.makedirs(at)
            os.rename(at + ".parquet", os.path.join(at, "train.parquet"))

    def build(store: str, specs: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", CHILD, path, str(tmp_path / store), specs],
                              check=False, capture_output=True, text=True)

    blocked = build("blocked", "stats,svd:k=4")
    assert blocked.returncode == 0 and blocked.stdout.split() == ["2"], blocked.stderr[-2000:]
    monkeypatch.setattr("featstore.grouping.BLOCK_BYTES", 1 << 40)  # and no limit: the column copied out whole
    featstore.build(path, ["stats", "svd:k=4"], store=str(tmp_path / "unlimited"), device="cpu")
    _same_entries(path, str(tmp_path / "unlimited"), str(tmp_path / "blocked"), ["stats", "svd:k=4"])
    whole = build("whole", "stats,centred_mean")
    assert whole.returncode == 1 and whole.stderr.strip() == (
        "column 'layer_000' (split train): no memory left to copy out 1000 rows (262.1 MB): featurizer centred_mean "
        "computes a column whole (per_row=False). Free memory, or leave the column out with --layers"), whole.stderr
    assert not list((tmp_path / "whole").glob("entries/*/*"))  # nothing of it published
