"""Featurizer failures during a build: clear errors, nothing partial published; stored dtypes."""

import json
import os
import subprocess
import sys
import threading
import time

import datasets
import pytest
import torch

import featstore
from featstore import FeaturizerError, SpecError, read_column
from featstore.featurizers import parse_spec


def _entries(store_dir):
    root = os.path.join(store_dir, "entries")
    return sorted(k for shard in os.listdir(root) for k in os.listdir(os.path.join(root, shard))) \
        if os.path.isdir(root) else []


@featstore.featurizer("test_fails_on_layer_3", version="1")
def _fails(x):
    if float(x[0, 0, 0]) == _FIRST_VALUE_OF_LAYER_3[0]:
        raise ValueError("boom")
    return x.mean(2)


_FIRST_VALUE_OF_LAYER_3 = [None]


@featstore.featurizer("test_nan", version="1")
def _nan(x):
    out = x.mean(2)
    out[min(5, len(out) - 1), 0] = float("nan")
    return out


@featstore.featurizer("test_refuses_nonfinite", version="1")
def _refuses(x):
    if not torch.isfinite(x).all():
        raise ValueError("non-finite")
    return x.mean(2)


@featstore.featurizer("test_huge", version="1")
def _huge(x):
    return x.mean(2) * 0 + 1e6  # fine in float32, inf in float16


@featstore.featurizer("test_huge64", version="1")
def _huge64(x):
    return x.double().mean(2) * 0 + 1e300  # finite in float64, inf in float32


@featstore.featurizer("test_wrong_shape", version="1", output_shape=lambda shape: (3,))
def _wrong(x):
    return x.mean(2)


_OUT_OF_MEMORY = {"error": torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")}  # what _small raises


@featstore.featurizer("test_batch_wide", version="1")  # no declared shape: a one-row probe gives (1,)
def _batch_wide(x):
    return x.flatten(1)[:, : len(x)]


@featstore.featurizer("test_needs_small_batches", version="1")
def _small(x):
    if len(x) > 16:
        raise _OUT_OF_MEMORY["error"]
    return x.mean(2)


torch.manual_seed(0)
_PROBE = torch.nn.Linear(16 * 16, 4)  # a learned probe: its parameters require gradients


@featstore.featurizer("test_linear_probe", version="1")
def _linear_probe(x):
    return _PROBE(x.flatten(1))


def test_a_featurizer_built_on_an_nn_module_computes_without_autograd(sanity_dir, store_dir):
    import numpy as np

    assert featstore.build("sanity", ["test_linear_probe"], store=store_dir, device="cpu").computed == 16
    source = featstore.sources.load_source("sanity")
    x = torch.from_numpy(featstore.read_column(source.splits["test"]._data, "layer_004").copy())
    with torch.no_grad():
        expected = _PROBE(x.flatten(1)).numpy()
    loaded = featstore.open("sanity", store=store_dir).load("layer_004", "test_linear_probe", split="test")
    np.testing.assert_allclose(loaded.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert not loaded.requires_grad


@featstore.featurizer("test_returns_a_list", version="1")
def _returns_a_list(x):
    return [float(v) for v in x.flatten(1).mean(1)]


@featstore.featurizer("test_returns_a_scalar", version="1")
def _returns_a_scalar(x):
    return x.mean()  # over the whole batch, not per row


@featstore.featurizer("test_returns_numpy", version="1")
def _returns_numpy(x):
    return x.flatten(1).numpy()


@pytest.mark.parametrize("spec, got", [("test_returns_a_list", "list"),
                                       ("test_returns_a_scalar", r"a tensor of shape \[\]"),
                                       ("test_returns_numpy", "ndarray")])
def test_a_featurizer_that_does_not_return_a_row_per_row_is_refused_before_building(sanity_dir, store_dir, spec,
                                                                                    got):
    with pytest.raises(SpecError, match=rf"^featurizer {spec} cannot use column 'layer_000' \(split train\): a probe "
                                        rf"batch of 1 row of shape \(16, 16\) returned {got}; a featurizer must "
                                        r"return a tensor with one row per input row"
                                        + (r" \(a NumPy array: return torch.from_numpy\(a\).to\(x.device\)\)$"
                                           if got == "ndarray" else "$")):
        featstore.build("sanity", [spec], store=store_dir, device="cpu")
    assert _entries(store_dir) == []


@featstore.featurizer("test_needs_a_big_batch", version="1")
def _needs_a_big_batch(x):
    if len(x) < 2:
        raise ValueError("needs at least 2 rows to centre")
    return x.flatten(1) - x.flatten(1).mean(0)


def test_a_featurizer_that_fails_on_its_probe_is_refused_before_building(sanity_dir, store_dir):
    with pytest.raises(SpecError, match=r"^featurizer test_needs_a_big_batch cannot use column 'layer_000' \(split "
                                        r"train\): a probe batch of 1 row of shape \(16, 16\) failed: ValueError\('needs "
                                        r"at least 2 rows to centre'\)"):
        featstore.build("sanity", ["stats", "test_needs_a_big_batch"], store=store_dir, device="cpu")
    assert _entries(store_dir) == []


@featstore.featurizer("test_counts", version="1")
def _counts(x):
    return (x > 0).sum(dim=(1, 2))[:, None]  # int64: a count, not cast


def test_a_featurizer_returning_integers_is_refused_before_building(sanity_dir, store_dir):
    # it failed after the plan, with a hint about the probe's shape, which was right
    with pytest.raises(SpecError, match=r"^featurizer test_counts cannot use column 'layer_000' \(split train\): a "
                                        r"probe batch of 1 row of shape \(16, 16\) returned a torch.int64 tensor; a "
                                        r"featurizer must return a floating one \(cast it: .float\(\)\)$"):
        featstore.build("sanity", ["test_counts"], store=store_dir, device="cpu")
    assert _entries(store_dir) == []


@featstore.featurizer("test_centres_in_place", version="1")
def _in_place(x):
    x -= x.mean(dim=(1, 2), keepdim=True)  # a user's easy mistake: the column's other featurizers see it
    return x.flatten(1)[:, :2]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
@pytest.mark.parametrize("order", [["test_centres_in_place", "raw"], ["raw", "test_centres_in_place"]])
def test_a_featurizer_that_changes_its_input_in_place_is_refused(sanity_dir, store_dir, order, device):
    """Every featurizer of a column computes from the same tensor, and `raw`'s entry (its input
    itself) is written while the others run: an in-place change would reach both, silently."""
    import numpy as np

    with pytest.raises(FeaturizerError, match=r"^featurizer test_centres_in_place on column 'layer_000' \(split "
                                              r"train, rows 0-255\) changed its input in place; nothing of it was "
                                              r"stored. Compute out of place \(x = x - m, not x -= m"):
        featstore.build("sanity", order, store=store_dir, device=device)
    assert featstore.verify(store_dir).ok  # what was written is whole
    featstore.build("sanity", ["raw"], store=store_dir, device=device)
    source = featstore.sources.load_source("sanity")
    fs = featstore.open("sanity", store=store_dir)
    for layer in source.layers:
        np.testing.assert_array_equal(fs.load(layer, "raw").numpy(),
                                      featstore.read_column(source.splits["train"]._data, layer))


def test_a_raising_featurizer_names_itself_the_column_and_rows(sanity_dir, store_dir):
    from featstore import read_column
    from featstore.digest_cache import column_digest
    from featstore.keys import entry_key
    from featstore.sources import load_source
    from featstore.store import Store

    source = load_source("sanity")
    _FIRST_VALUE_OF_LAYER_3[0] = float(read_column(source.splits["train"]._data, "layer_003")[0, 0, 0])
    with pytest.raises(FeaturizerError, match=r"featurizer test_fails_on_layer_3 on column 'layer_003' \(split "
                                              r"train, rows 0-255\) failed: ValueError\('boom'\)"):
        featstore.build("sanity", ["test_fails_on_layer_3"], store=store_dir, device="cpu")
    identity = parse_spec("test_fails_on_layer_3").identity
    key = {(s, layer): entry_key(column_digest(split, layer).digest, identity)
           for s, split in source.splits.items() for layer in source.layers}
    # The columns finished before the failure are catalogued (with the labels): loadable, and gc keeps them.
    fs = featstore.open("sanity", store=store_dir)
    fs.close()
    finished = {key[s, f"layer_00{i}"] for s in ("train", "test") for i in range(3)}
    assert {r.key for r in fs.catalog.rows} == finished
    labels = {s.labels for s in fs.catalog.splits.values()}
    stored = set(_entries(store_dir)) - labels
    # Nothing of the failed column; beyond it, whatever the CPU build's other lanes finished
    # meanwhile (one per core), uncatalogued; every entry complete.
    assert key["train", "layer_003"] not in stored
    assert finished <= stored <= set(key.values())
    store = Store.open(store_dir)
    assert all(store.check_entry(k)[0] is None for k in stored)  # every chunk matches its digest
    featstore.gc(store_dir)
    assert set(_entries(store_dir)) == finished | labels


def test_nan_and_wrong_shapes_are_refused(sanity_dir, store_dir):
    with pytest.raises(FeaturizerError, match=r"test_nan on column 'layer_000' \(split train\) "
                                              r"returned NaN or inf at row 5; nothing of it was stored"):
        featstore.build("sanity", ["test_nan"], store=store_dir)
    with pytest.raises(FeaturizerError, match=r"test_huge:dtype=float16 on column 'layer_000' \(split train\) returned NaN or "
                                              r"inf at row 0 \(stored as float16: a value beyond its range\?\)"):
        featstore.build("sanity", ["test_huge:dtype=float16"], store=store_dir)
    assert featstore.build("sanity", ["test_huge"], layers=["layer_000"], store=f"{store_dir}-ok").computed == 2
    with pytest.raises(FeaturizerError, match=r"test_huge64 on column 'layer_000' \(split train\) returned NaN or inf "
                                              r"at row 0 \(returned float64, stored as float32: a value beyond its range"):
        featstore.build("sanity", ["test_huge64"], store=store_dir)
    with pytest.raises(FeaturizerError, match=r"returned torch.float32\[256, 16\]; it must return a floating "
                                              r"tensor of shape \[256, 3\]$"):  # declared: no probe to blame
        featstore.build("sanity", ["test_wrong_shape"], store=store_dir)
    with pytest.raises(FeaturizerError, match=r"returned torch.float32\[256, 256\]; it must return a floating tensor of "
                                              r"shape \[256, 1\] \(the row shape \[1\] came from a one-row probe: "):
        featstore.build("sanity", ["test_batch_wide"], store=store_dir)
    assert _entries(store_dir) == []


def test_a_failure_caused_by_nan_or_inf_in_the_input_names_the_input_row(tmp_path, store_dir):
    from conftest import saved_layers_dataset

    saved_layers_dataset(tmp_path / "d", layers=2, rows=30, dim=8, inf_at=(1, 17))
    where = r"on column 'layer_001' \(split train"
    hint = r"; its input holds NaN or inf at row 17 \(fix or drop such rows, or leave the column out with --layers\)$"
    with pytest.raises(FeaturizerError, match=where + r", rows 0-29\) failed: ValueError\('non-finite'\)" + hint):
        featstore.build(str(tmp_path / "d"), ["test_refuses_nonfinite"], store=store_dir, device="cpu")
    with pytest.raises(FeaturizerError, match=where + r".*" + hint):  # raises or returns NaN, by LAPACK path
        featstore.build(str(tmp_path / "d"), ["svd:k=2"], store=store_dir, device="cpu")
    with pytest.raises(FeaturizerError, match=where + r"\) returned NaN or inf at row 17; nothing of it was stored" + hint):
        featstore.build(str(tmp_path / "d"), ["stats:dtype=float16"], store=store_dir, device="cpu")
    with pytest.raises(FeaturizerError, match=r"returned NaN or inf at row 5; nothing of it was stored$"):
        featstore.build(str(tmp_path / "d"), ["test_nan"], store=store_dir, device="cpu")  # finite input: no hint


def test_a_matrix_featurizer_on_a_vector_column_says_how_to_leave_it_out(tmp_path, store_dir):
    import datasets
    import numpy as np

    matrices = np.ones((4, 3, 3), np.float32)
    datasets.Dataset.from_dict({"layer_0": matrices, "bias": [[1.0, 2.0]] * 4}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(SpecError, match=r"^featurizer svd cannot use column 'bias' \(split train\): svd needs 2-D "
                       r"values .* shape \(2,\) \(pick the matrix columns with --layers, or use raw, stats or randproj"):
        featstore.build(str(tmp_path / "d"), ["stats", "svd"], store=store_dir)
    assert not os.path.exists(store_dir)  # refused before anything was computed
    report = featstore.build(str(tmp_path / "d"), ["stats", "svd"], layers=["layer_*"], store=store_dir)
    assert sorted((e.layer, e.featurizer) for e in report.entries) == [("layer_0", "stats"), ("layer_0", "svd")]


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes."),  # torch, CPU
    MemoryError("Unable to allocate 64.0 GiB for an array with shape (256, 4096, 4096)"),  # numpy
])
def test_out_of_memory_retries_with_smaller_batches(sanity_dir, store_dir, caplog, monkeypatch, error):
    monkeypatch.setitem(_OUT_OF_MEMORY, "error", error)
    report = featstore.build("sanity", ["test_needs_small_batches"], layers=["layer_000"], store=store_dir,
                             device="cpu")
    assert report.computed == 2
    assert "retrying with batches of" in caplog.text
    loaded = featstore.open("sanity", store=store_dir).load("layer_000", "test_needs_small_batches")
    assert loaded.shape == (256, 16)


@pytest.mark.parametrize("dtype, torch_dtype, tolerance", [("float16", torch.float16, 1e-3),
                                                           ("bfloat16", torch.bfloat16, 8e-3)])
def test_reduced_precision_storage(sanity_dir, store_dir, dtype, torch_dtype, tolerance):
    full = featstore.build("sanity", ["svd"], layers=["layer_002"], store=store_dir)
    low = featstore.build("sanity", ["svd"], layers=["layer_002"], dtype=dtype, store=store_dir)
    assert low.computed == 2  # the stored dtype is part of the identity
    assert {e.key for e in low.entries}.isdisjoint(e.key for e in full.entries)
    fs = featstore.open("sanity", store=store_dir)
    assert fs.featurizers == ["svd", f"svd:dtype={dtype}"]
    reduced = fs.load("layer_002", f"svd:dtype={dtype}")
    exact = fs.load("layer_002", "svd")
    assert reduced.dtype == torch_dtype and reduced.shape == exact.shape
    torch.testing.assert_close(reduced.float(), exact, rtol=tolerance, atol=tolerance * float(exact.max()))
    assert fs.row("layer_002", f"svd:dtype={dtype}").nbytes == exact.numel() * 2


def test_every_builtin_builds_stores_and_loads_what_it_computes(sanity_dir, store_dir):
    """Through the whole pipeline on the CPU (plan, lanes, write, catalog, load): each built-in's
    entry holds what calling it on the column gives, bit for bit, and a 16-bit stored dtype holds
    exactly that result rounded (the README's accuracy table: storage rounding only)."""
    specs = ["raw", "stats", "svd", "svd:k=20,normalize=true", "spectral", "randproj:dim=32", "norms"]
    low = [f"{s}{',' if ':' in s else ':'}dtype={d}" for s in specs for d in ("float16", "bfloat16")]
    report = featstore.build("sanity", specs + low, layers=["layer_002", "layer_005"], store=store_dir, device="cpu")
    assert report.computed == 2 * 2 * len(specs + low)
    fs = featstore.open("sanity", store=store_dir)
    for split in ("train", "test"):
        x = torch.from_numpy(read_column(datasets.load_from_disk(str(sanity_dir))[split], "layer_005").copy())
        for spec in specs:
            expected = parse_spec(spec)(x)
            loaded = fs.load("layer_005", spec, split=split)
            assert loaded.dtype == torch.float32 and torch.equal(loaded, expected), (spec, split)
            for dtype in (torch.float16, torch.bfloat16):
                reduced = fs.load("layer_005", f"{spec}{',' if ':' in spec else ':'}dtype={str(dtype)[6:]}", split=split)
                assert reduced.dtype == dtype and torch.equal(reduced, expected.to(dtype)), (spec, split, dtype)


def test_changing_a_parameter_only_builds_that_featurizer(sanity_dir, store_dir):
    featstore.build("sanity", ["svd", "stats"], store=store_dir)
    report = featstore.build("sanity", ["svd:k=32", "stats"], store=store_dir)
    assert {(e.featurizer, e.status) for e in report.entries} == {("svd:k=32", "computed"), ("stats", "reused")}
    assert parse_spec("svd:k=32").identity != parse_spec("svd").identity


def test_each_entry_records_what_made_it(sanity_dir, store_dir):
    import datasets
    import numpy
    import zarr

    featstore.build("sanity", ["svd"], store=store_dir, device="cpu")
    fs = featstore.open("sanity", store=store_dir)
    info = fs.store.entry_info(fs.row("layer_002", "svd").key)
    assert info.device == "cpu"
    assert info.versions == {"featstore": featstore.__version__, "torch": torch.__version__,
                             "zarr": zarr.__version__, "datasets": datasets.__version__, "numpy": numpy.__version__}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_build_matches_cpu_build(sanity_dir, tmp_path):
    specs = ["stats", "svd", "spectral", "randproj:dim=32", "norms"]
    featstore.build("sanity", specs, store=str(tmp_path / "cpu"), device="cpu")
    featstore.build("sanity", specs, store=str(tmp_path / "gpu"), device="cuda")
    cpu, gpu = featstore.open("sanity", store=str(tmp_path / "cpu")), featstore.open("sanity", store=str(tmp_path / "gpu"))
    assert gpu.store.entry_info(gpu.row("layer_002", "svd").key).device.startswith("cuda")
    for spec in specs:
        for layer in cpu.layers:
            a, b = cpu.load(layer, spec), gpu.load(layer, spec)
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
            if spec == "svd":  # both exact to float32 rounding: within 6e-8 of s_max each
                assert float(((b - a).abs().amax(1) / a[:, 0]).max()) < 2e-7


def test_builds_that_may_use_a_gpu_prefetch_tritons_cache_key_once(sanity_dir, tmp_path, monkeypatch):
    import importlib.util

    import featstore.svdvals as sv

    found, calls = importlib.util.find_spec, []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "triton" else found(name, *a))
    monkeypatch.setattr(sv, "_triton_key", lambda: calls.append(threading.current_thread().name))
    monkeypatch.setattr(sv, "_prefetching", [])
    featstore.build("sanity", ["svd"], store=str(tmp_path / "cpu"), device="cpu")
    assert calls == [] and sv._prefetching == []
    for store in ("auto", "again"):  # auto may find a GPU: the key is started before torch is imported
        featstore.build("sanity", ["svd"], store=str(tmp_path / store), device="auto")
    sv._prefetching[0].join()
    assert calls == ["featstore-triton"] and len(sv._prefetching) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_build_computes_tritons_cache_key_once_in_its_prefetch_thread(sanity_dir, store_dir):
    """In a fresh process (Triton caches the key per process): the kernel's first launch waits for
    the prefetch thread rather than hash Triton's files again."""
    code = """if True:
        import json, sys, featstore, featstore.svdvals as sv
        featstore.build("sanity", ["svd"], store=sys.argv[1], device="cuda")
        try:
            from triton.runtime.cache import triton_key
        except ImportError:
            from triton.compiler.compiler import triton_key
        print(json.dumps({"threads": [t.name for t in sv._prefetching], "alive": any(t.is_alive() for t in sv._prefetching),
                          "computed": triton_key.cache_info().misses}))"""
    out = subprocess.run([sys.executable, "-c", code, store_dir], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == {"threads": ["featstore-triton"], "alive": False, "computed": 1}


def _count_hashing(monkeypatch, per_file=None):
    """Record the columns a build hashes whole; with `per_file`, the (file, column) it hashes alone."""
    from featstore import builder
    from featstore.split import Split

    calls = []
    real = builder.column_digests
    monkeypatch.setattr(builder, "column_digests", lambda *a: calls.append(1) or real(*a))
    if per_file is not None:
        real_file = Split.file_digest
        monkeypatch.setattr(Split, "file_digest",
                            lambda self, i, name: per_file.append((i, name)) or real_file(self, i, name))
    return calls


def test_digest_cache_skips_hashing_until_a_file_changes(sanity_dir, store_dir, monkeypatch):
    featstore.build("sanity", ["stats"], store=store_dir)
    per_file = []
    calls = _count_hashing(monkeypatch, per_file)
    again = featstore.build("sanity", ["stats"], store=store_dir)
    assert (again.computed, len(calls)) == (0, 0)  # every file's stat matched: nothing hashed
    assert featstore.build("sanity", ["stats"], store=store_dir, rehash=True).computed == 0
    assert len(calls) == 16  # --rehash hashed all 8 layers x 2 splits, and found them unchanged

    # Rewrite one value of the train split in place: same size, new bytes.
    import datasets
    import numpy as np

    from featstore import read_column

    ds = datasets.load_from_disk(str(sanity_dir))["train"]
    target = read_column(ds, "layer_004")
    data_file = next(sanity_dir.joinpath("train").glob("data-*.arrow"))
    raw = bytearray(data_file.read_bytes())
    needle = target[7].tobytes()
    at = raw.find(needle)
    assert at > 0
    raw[at : at + 4] = np.float32(123.0).tobytes()
    del ds
    data_file.write_bytes(bytes(raw))
    calls.clear()
    report = featstore.build("sanity", ["stats"], store=store_dir)
    assert per_file == []  # the split's one file changed: no file of it vouches for its columns
    assert len(calls) == 8  # only the changed split was hashed again
    assert {(e.split, e.layer) for e in report.entries if e.status == "computed"} == {("train", "layer_004")}
    assert float(featstore.open("sanity", store=store_dir).load("layer_004", "stats")[7, 3]) == 123.0


def test_a_cpu_build_gives_torch_its_threads_back(sanity_dir, store_dir):
    before = torch.get_num_threads()
    featstore.build("sanity", ["svd"], store=store_dir, device="cpu")
    assert torch.get_num_threads() == before


_lanes_seen = []  # per call: (thread name, torch's intra-op threads, calls running at that moment)
_running = [0]
_running_lock = threading.Lock()


@featstore.featurizer("test_records_its_lane", version="1", output_shape=lambda shape: shape[:1])
def _records_its_lane(x):
    with _running_lock:
        _running[0] += 1
        _lanes_seen.append((threading.current_thread().name, torch.get_num_threads(), _running[0]))
    time.sleep(0.2)  # long enough for the next column to be read and handed to another lane
    with _running_lock:
        _running[0] -= 1
    return x.mean(2)


@pytest.mark.parametrize("cores, columns_that_fit", [(3, None), (4, 2)])
def test_a_cpu_build_computes_columns_in_parallel_one_core_each(cores, columns_that_fit, sanity_dir, store_dir,
                                                                monkeypatch):
    from featstore.sources import load_source

    monkeypatch.setattr("featstore.device.cpu_count", lambda: cores)
    if columns_that_fit:  # fewer lanes than cores: still one thread each (torch's count is process-wide)
        monkeypatch.setattr("featstore.builder.COMPUTE_BYTES", columns_that_fit * 256 * 16 * 16 * 4)
    _lanes_seen.clear()
    report = featstore.build("sanity", ["test_records_its_lane"], store=store_dir, device="cpu")
    assert len(_lanes_seen) == 16
    assert {(name.split("_")[0], threads) for name, threads, _ in _lanes_seen} == {("featstore-compute", 1)}
    assert 2 <= max(running for *_, running in _lanes_seen) <= (columns_that_fit or cores)
    source = load_source("sanity")  # entries are reported in build order, whichever lane finished first
    assert [(e.layer, e.split) for e in report.entries] == [(layer, s) for layer in source.layers for s in source.splits]
    torch.testing.assert_close(featstore.open("sanity", store=store_dir).load("layer_005", "test_records_its_lane"),
                               torch.from_numpy(source.splits["train"].read("layer_005").mean(2)))


def test_omp_num_threads_1_computes_one_column_at_a_time(sanity_dir, store_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what the README offers for featurizers that keep state
    _lanes_seen.clear()
    featstore.build("sanity", ["test_records_its_lane"], store=store_dir, device="cpu")
    assert {(name, threads, running) for name, threads, running in _lanes_seen} == {("MainThread", 1, 1)}


def test_columns_too_large_to_compute_side_by_side_get_torchs_threads_instead(sanity_dir, store_dir, monkeypatch):
    monkeypatch.setattr("featstore.device.cpu_count", lambda: 3)
    monkeypatch.setattr("featstore.builder.COMPUTE_BYTES", 1)  # room for one column at a time
    _lanes_seen.clear()
    featstore.build("sanity", ["test_records_its_lane"], store=store_dir, device="cpu")
    assert {(name, threads, running) for name, threads, running in _lanes_seen} == {("MainThread", 3, 1)}


_reads_done: list[int] = []
_read_ahead: list[int] = []  # at each column's compute: the columns read so far, less those computed before


@featstore.featurizer("test_records_reads_ahead", version="1", per_row=False, output_shape=lambda shape: shape[:1])
def _records_reads_ahead(x):
    time.sleep(0.05)  # long enough for the readers to get as far ahead as they may
    _read_ahead.append(len(_reads_done) - len(_read_ahead))
    return x.mean(2)


def test_columns_are_read_ahead_of_the_compute_within_a_byte_budget(sanity_dir, store_dir, monkeypatch):
    """Each column read ahead is a copy in memory: a build of large columns (a full-rank delta per
    row) must not hold several besides the one it computes, whatever the number of readers."""
    from featstore import builder

    real = builder._prepare

    def prepare(*args):
        ready = real(*args)
        _reads_done.append(1)
        return ready

    monkeypatch.setattr(builder, "_prepare", prepare)
    monkeypatch.setattr("featstore.builder.COMPUTE_BYTES", 1)  # one column computed at a time
    monkeypatch.setattr("featstore.builder.READ_AHEAD_BYTES", 1)  # less than any column: one ahead, no more
    _reads_done.clear()
    _read_ahead.clear()
    featstore.build("sanity", ["test_records_reads_ahead"], store=store_dir, device="cpu", progress=False)
    assert len(_read_ahead) == 16 and max(_read_ahead) == 2  # this column and the next: still overlapped
    entry = featstore.open("sanity", store=store_dir).load("layer_007", "test_records_reads_ahead", split="test")
    assert entry.shape == (64, 16)


@featstore.featurizer("test_fails_slowly_on_train", version="1", output_shape=lambda shape: shape[:1])
def _fails_slowly_on_train(x):
    if len(x) == 256:  # the sanity preset's train split; its test split has 64 rows
        time.sleep(0.3)
    raise ValueError(f"boom on {len(x)} rows")


def test_lanes_report_the_first_failure_in_build_order(sanity_dir, store_dir, monkeypatch):
    monkeypatch.setattr("featstore.device.cpu_count", lambda: 3)
    # layer_000's test split fails first, but its train split comes first in the build
    with pytest.raises(FeaturizerError, match=r"column 'layer_000' \(split train, rows 0-255\) failed: "
                                              r"ValueError\('boom on 256 rows'\)"):
        featstore.build("sanity", ["test_fails_slowly_on_train"], store=store_dir, device="cpu")


@featstore.featurizer("test_slow_on_train_fails_on_test", version="1", output_shape=lambda shape: shape[:1])
def _slow_on_train_fails_on_test(x):
    if len(x) == 64:  # the sanity preset's test split
        raise ValueError("boom")
    time.sleep(0.3)
    return x.mean(2)


def test_columns_before_a_failure_still_computing_when_it_came_are_catalogued(sanity_dir, store_dir, monkeypatch):
    """layer_000's test split fails while its train split, first in the build, still computes in
    another lane: the build waits for it and catalogues it (seen on 16 cores)."""
    monkeypatch.setattr("featstore.device.cpu_count", lambda: 3)
    with pytest.raises(FeaturizerError, match=r"column 'layer_000' \(split test, rows 0-63\) failed"):
        featstore.build("sanity", ["test_slow_on_train_fails_on_test"], store=store_dir, device="cpu")
    with featstore.open("sanity", store=store_dir) as fs:
        assert [(r.split, r.layer) for r in fs.catalog.rows] == [("train", "layer_000")]


_batches_seen: list[int] = []


@featstore.featurizer("test_records_its_batches", version="1", output_shape=lambda shape: (2,))
def _records_its_batches(x):
    _batches_seen.append(len(x))
    return torch.stack([x.mean((1, 2)), x.amax((1, 2))], 1).float()


@featstore.featurizer("test_fails_on_joined_batches", version="1", output_shape=lambda shape: (1,))
def _fails_on_joined_batches(x):
    _batches_seen.append(len(x))
    if len(x) == 320:  # the sanity preset's two splits of a layer joined (256 + 64 rows)
        raise ValueError("not joined, please")
    return x.mean((1, 2))[:, None].float()


@pytest.fixture
def joins_on_the_cpu(monkeypatch):
    """The GPU's join of a layer's splits into one call per featurizer, in a one-lane CPU build
    (CI has no GPU; test_gpu_build_joins_a_layers_splits runs it on one)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("featstore.builder.joins", lambda device: True)
    _batches_seen.clear()


def test_a_layers_splits_joined_in_one_call_give_the_entries_of_separate_calls(sanity_dir, tmp_path,
                                                                               joins_on_the_cpu):
    specs = ["test_records_its_batches", "svd:k=4", "stats"]
    featstore.build("sanity", specs, store=str(tmp_path / "joined"), device="cpu")
    assert _batches_seen == [320] * 8  # one call per layer: train's 256 rows and test's 64
    joined = featstore.open("sanity", store=str(tmp_path / "joined"))
    with pytest.MonkeyPatch.context() as m:
        m.setattr("featstore.builder.joins", lambda device: False)
        featstore.build("sanity", specs, store=str(tmp_path / "apart"), device="cpu")
    apart = featstore.open("sanity", store=str(tmp_path / "apart"))
    assert {(r.split, r.layer, r.featurizer, r.key, r.shape) for r in joined.catalog.rows} == \
           {(r.split, r.layer, r.featurizer, r.key, r.shape) for r in apart.catalog.rows}
    assert {r.shape[0] for r in joined.catalog.rows if r.split == "test"} == {64}
    for spec in specs:
        for split in ("train", "test"):
            for layer in joined.layers:
                torch.testing.assert_close(joined.load(layer, spec, split=split), apart.load(layer, spec, split=split),
                                           rtol=0, atol=0)
    assert featstore.verify(str(tmp_path / "joined")).ok


def test_a_joined_call_that_fails_is_made_again_per_column(sanity_dir, store_dir, joins_on_the_cpu):
    report = featstore.build("sanity", ["test_fails_on_joined_batches"], store=store_dir, device="cpu")
    assert report.computed == 16
    assert _batches_seen == [320, 256, 64] * 8
    fs = featstore.open("sanity", store=store_dir)
    source = featstore.sources.load_source("sanity")
    for split in ("train", "test"):
        values = featstore.read_column(source.splits[split]._data, "layer_005")
        torch.testing.assert_close(fs.load("layer_005", "test_fails_on_joined_batches", split=split),
                                   torch.from_numpy(values.copy()).mean((1, 2))[:, None])


def test_a_failure_in_a_joined_build_names_the_column_split_and_rows(sanity_dir, store_dir, joins_on_the_cpu):
    with pytest.raises(FeaturizerError, match=r"featurizer test_fails_slowly_on_train on column 'layer_000' \(split "
                                              r"train, rows 0-255\) failed: ValueError\('boom on 256 rows'\)"):
        featstore.build("sanity", ["test_fails_slowly_on_train"], store=store_dir, device="cpu")


_WORKSPACE_BYTES_PER_ROW = [0]


@featstore.featurizer("test_needs_gpu_memory_per_row", version="1", output_shape=lambda shape: (shape[0],))
def _needs_gpu_memory_per_row(x):
    _batches_seen.append(len(x))
    workspace = torch.ones((len(x), _WORKSPACE_BYTES_PER_ROW[0] // 4), device=x.device)  # allocated for real
    return x.mean(2) * workspace[:, :1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_out_of_memory_for_real_retries_with_smaller_batches(sanity_dir, store_dir, caplog):
    """A featurizer whose batch needs more memory than the GPU has: the allocator's own out of
    memory error, not a simulated one. Each layer's joined 320 rows take 10x the free memory,
    160 5x, 80 2.5x, 40 1.25x; 20 fit. What is stored is what one batch would have given."""
    _batches_seen.clear()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    _WORKSPACE_BYTES_PER_ROW[0] = free // 32
    try:
        report = featstore.build("sanity", ["test_needs_gpu_memory_per_row"], store=store_dir, device="cuda")
    finally:
        torch.cuda.empty_cache()  # the 20-row workspace the allocator keeps: the next tests size batches from what is free
    assert report.computed == 16
    assert _batches_seen == ([320, 160, 80, 40] + [20] * 16) * 8
    assert ("featurizer test_needs_gpu_memory_per_row on column 'layer_000' (split train+test, rows 0-319) ran out of "
            "memory; retrying with batches of 160 rows") in caplog.text
    assert "(split train+test, rows 0-39) ran out of memory; retrying with batches of 20 rows" in caplog.text
    source = featstore.sources.load_source("sanity")
    with featstore.open("sanity", store=store_dir) as fs:
        for split in ("train", "test"):
            x = torch.from_numpy(read_column(source.splits[split]._data, "layer_006").copy())
            torch.testing.assert_close(fs.load("layer_006", "test_needs_gpu_memory_per_row", split=split), x.mean(2))
    assert torch.cuda.memory_allocated() < free // 32  # no workspace left behind


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_column_the_gpu_has_no_room_for_goes_there_a_batch_at_a_time(tmp_path, store_dir, caplog):
    """A GPU nearly filled by something else (here a ballast tensor): the 268 MB column does not fit
    in the 160 MB left, so its batches go to the GPU one at a time, sized from what is free."""
    from conftest import saved_layers_dataset

    saved_layers_dataset(tmp_path / "d", layers=1, rows=64, dim=1024)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    ballast = torch.empty(free - (160 << 20), dtype=torch.uint8, device="cuda")
    try:
        report = featstore.build(str(tmp_path / "d"), ["raw", "stats"], store=store_dir, device="cuda")
    finally:
        del ballast
        torch.cuda.empty_cache()
    assert report.computed == 2 and report.device == "cuda"
    assert ("column 'layer_000' (split train, 268.4 MB) does not fit in the free memory of cuda: its batches go "
            "there one at a time") in caplog.text
    x = torch.from_numpy(read_column(datasets.load_from_disk(str(tmp_path / "d")), "layer_000").copy())
    flat = x.reshape(len(x), -1).double()
    expected = torch.stack([flat.mean(1), flat.std(1, correction=0), flat.norm(dim=1), flat.abs().amax(1)], 1)
    with featstore.open(str(tmp_path / "d"), store=store_dir) as fs:
        assert torch.equal(fs.load("layer_000", "raw"), x)
        torch.testing.assert_close(fs.load("layer_000", "stats"), expected.float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_build_joins_a_layers_splits(sanity_dir, store_dir):
    _batches_seen.clear()
    featstore.build("sanity", ["test_records_its_batches", "svd"], store=store_dir, device="cuda")
    assert _batches_seen == [320] * 8
    fs = featstore.open("sanity", store=store_dir)
    assert {r.split: r.shape for r in fs.catalog.rows if r.layer == "layer_001" and r.featurizer == "svd"} == \
           {"train": (256, 16), "test": (64, 16)}


def test_no_room_for_a_layers_splits_joined_computes_them_one_by_one(sanity_dir, store_dir, joins_on_the_cpu,
                                                                    monkeypatch):
    real_empty = torch.empty

    def empty(*shape, **kwargs):
        if shape and shape[0] == (320, 16, 16):  # the joined column: the sanity preset's 256 + 64 rows
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 320 KB")
        return real_empty(*shape, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    report = featstore.build("sanity", ["test_records_its_batches"], store=store_dir, device="cpu")
    assert report.computed == 16
    assert _batches_seen == [256, 64] * 8
