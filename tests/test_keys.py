import numpy as np
import pytest

from featstore.featurizers import parse_spec
from featstore.keys import (
    array_digest,
    canonical_json,
    column_digests,
    dataset_slug,
    entry_key,
    featurizer_identity,
    parts_digest,
)

ARANGE = np.arange(12, dtype=np.float32).reshape(3, 4)


def test_golden_keys():
    """A fixed input's keys are pinned: if this fails, the key scheme changed, which orphans every
    store. Change it only on purpose, bumping keys.KEY_VERSION and noting it in the README.
    (KEY_VERSION 2: the stored dtype joined the featurizer identity; 3: the row count moved after the
    bytes, so one pass also gives the digest of any prefix of rows.)"""
    assert array_digest(ARANGE) == "d8c8eb70b9d9e5b6faa77d5d2d216079"
    identity = featurizer_identity("svd", {"k": 16}, "1")
    assert entry_key(array_digest(ARANGE), identity) == "91fc8b3c5868bb6c29e594bb50e7742a"
    assert dataset_slug("/data/my set/1k") == "data_my_set_1k-424fcc5c9bad"


def test_digest_depends_on_bytes_dtype_and_shape_only():
    assert array_digest(ARANGE.copy()) == array_digest(ARANGE)
    assert array_digest(np.asfortranarray(ARANGE)) == array_digest(ARANGE)  # C-order bytes
    assert array_digest(ARANGE.astype(np.float64)) != array_digest(ARANGE)
    assert array_digest(ARANGE.reshape(4, 3)) != array_digest(ARANGE)
    changed = ARANGE.copy()
    changed[2, 3] = np.nextafter(changed[2, 3], np.float32(100))
    assert array_digest(changed) != array_digest(ARANGE)


def test_parts_digest_equals_digest_of_joined():
    parts = [ARANGE[:1], ARANGE[1:]]
    assert parts_digest(parts, ARANGE.dtype, ARANGE.shape) == array_digest(ARANGE)


def test_one_pass_gives_the_digest_of_every_asked_prefix_and_segment():
    a = np.arange(60, dtype=np.float32).reshape(10, 6)
    parts = [a[:3], a[3:7], a[7:]]
    out = column_digests(parts, a.dtype, a.shape, prefixes=[0, 2, 3, 5, 10], segments=[4, 0, 5, 1])
    assert out.digest == array_digest(a)
    assert out.prefixes == {n: array_digest(a[:n]) for n in (0, 2, 3, 5, 10)}
    # a segment's digest is that of its rows alone, wherever the parts cut them
    assert out.segments == [array_digest(a[:4]), array_digest(a[4:4]), array_digest(a[4:9]), array_digest(a[9:])]
    assert column_digests([a], a.dtype, a.shape, segments=[4, 0, 5, 1]).segments == out.segments
    with pytest.raises(ValueError, match="segments of 9 rows for a column of 10"):
        column_digests(parts, a.dtype, a.shape, segments=[4, 5])


def test_entry_key_separates_featurizers_params_and_versions():
    d = array_digest(ARANGE)
    keys = {
        entry_key(d, featurizer_identity("svd", {"k": 16}, "1")),
        entry_key(d, featurizer_identity("svd", {"k": 32}, "1")),
        entry_key(d, featurizer_identity("svd", {"k": 16}, "2")),
        entry_key(d, featurizer_identity("stats", {}, "1")),
        entry_key(array_digest(ARANGE + 1), featurizer_identity("svd", {"k": 16}, "1")),
    }
    assert len(keys) == 5


def test_spec_spellings_share_a_key():
    d = array_digest(ARANGE)
    assert entry_key(d, parse_spec("svd").identity) == entry_key(d, parse_spec("svd:k=16").identity)
    assert entry_key(d, parse_spec(" svd:k=16 ").identity) != entry_key(d, parse_spec("svd:k=8").identity)


def test_canonical_json_is_order_free_and_type_tagged():
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1}) == b'{"a":[1,2],"b":1}'
    assert canonical_json({"k": 1}) != canonical_json({"k": "1"})
    with pytest.raises(ValueError):
        canonical_json({"k": float("nan")})



@pytest.mark.parametrize("name", ["../up", "a/b", "a\\b", "nul\0byte", ".", "..", "", "x" * 201])
def test_names_that_could_escape_a_path_are_refused(name):
    from featstore.keys import check_name

    with pytest.raises(ValueError, match=r"layer name .* is not allowed"):
        check_name("layer", name)


def test_ordinary_names_pass():
    from featstore.keys import check_name

    assert check_name("layer", "model.layers.17.self_attn.q_proj (lora_A)") == "model.layers.17.self_attn.q_proj (lora_A)"
