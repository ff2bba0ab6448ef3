import datasets
import numpy as np
import pytest
import torch

from featstore import SpecError, read_column
from featstore.featurizers import available, parse_spec


def test_builtins_are_registered_with_docs():
    found = available()
    assert {"raw", "stats", "svd"} <= set(found)
    assert all(f.doc for f in found.values())


def test_spec_parsing_binds_every_parameter():
    svd = parse_spec("svd")
    assert svd.params == {"k": 16, "normalize": False} and svd.spec == "svd"
    assert parse_spec("svd:k=16").spec == "svd"  # defaults are left out of the canonical spec
    assert parse_spec("svd:normalize=true,k=32").spec == "svd:k=32,normalize=true"
    assert parse_spec("svd:k=32", dtype="float16").spec == "svd:k=32,dtype=float16"
    assert parse_spec("svd:dtype=bfloat16", dtype="float16").dtype == "bfloat16"
    assert parse_spec("raw").spec == "raw"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", r"unknown featurizer 'nope'; available: .*svd"),
        ("svd:q=3", r"bad parameter 'q=3'.*svd accepts: k=16"),
        ("svd:k", r"bad parameter 'k'"),
        ("svd:k=big", r"'big' is not a valid int"),
        ("raw:k=1", r"raw accepts: none"),
    ],
)
def test_bad_specs_say_what_is_accepted(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec)


def test_svd_needs_matrices():
    with pytest.raises(SpecError, match=r"svd needs 2-D values"):
        parse_spec("svd").output_shape((16,))
    with pytest.raises(SpecError, match=r"at least 1"):
        parse_spec("svd:k=0").output_shape((4, 4))


@pytest.fixture
def sanity_layer(sanity_dir):
    return read_column(datasets.load_from_disk(str(sanity_dir))["train"], "layer_002")


def test_raw_is_float32_values(sanity_layer):
    out = parse_spec("raw")(torch.from_numpy(sanity_layer.copy()))
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), sanity_layer)


def test_stats_match_numpy_float64(sanity_layer):
    x = sanity_layer.astype(np.float64).reshape(len(sanity_layer), -1)
    expected = np.stack([x.mean(1), x.std(1), np.linalg.norm(x, axis=1), np.abs(x).max(1)], 1)
    out = parse_spec("stats")(torch.from_numpy(sanity_layer.copy())).numpy()
    assert out.shape == (len(x), 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("k", [4, 16, 20])
def test_svd_matches_numpy_float64_and_pads(sanity_layer, k):
    expected = np.linalg.svd(sanity_layer.astype(np.float64), compute_uv=False)  # (n, 16), descending
    out = parse_spec(f"svd:k={k}")(torch.from_numpy(sanity_layer.copy())).numpy()
    assert out.shape == (len(sanity_layer), k) and out.dtype == np.float32
    m = min(k, 16)
    np.testing.assert_allclose(out[:, :m], expected[:, :m], rtol=1e-4, atol=1e-5 * expected.max())
    assert (out[:, 16:] == 0).all()
