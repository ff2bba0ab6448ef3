import os
import re
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import torch

from featstore import SpecError, read_column
from featstore.featurizers import BUILTINS, available, parse_spec, register


def test_builtins_are_registered_with_docs():
    builtins = {"raw", "stats", "svd", "spectral", "randproj", "norms"}
    found = available()
    assert builtins <= set(found) and set(BUILTINS) == {n for n, f in found.items() if f.fn.__module__.startswith(
        "featstore.featurizers.")}
    assert all("Output (n," in found[name].doc for name in builtins)


def test_a_users_module_cannot_take_a_builtin_name_or_fail_to_import_without_saying_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "shadowing.py").write_text("import featstore\n\n\n@featstore.featurizer('svd')\n"
                                          "def svd(x):\n    return x.mean(1)\n")
    with pytest.raises(SpecError, match=r"^cannot load featurizer 'shadowing:svd': importing 'shadowing' failed: "
                                        r"SpecError: featurizer name 'svd' is featstore's built-in svd; register "
                                        r"shadowing.svd under another name$"):
        parse_spec("shadowing:svd")
    assert parse_spec("svd").identity["version"] == "1"  # the built-in is still the one
    (tmp_path / "typo.py").write_text("def broken(x)\n    return x\n")
    with pytest.raises(SpecError, match=r"^cannot load featurizer 'typo:broken': importing 'typo' failed: "
                                        r"SyntaxError: expected ':' \(typo.py, line 1\)$"):
        parse_spec("typo:broken")
    from featstore.featurizers import import_modules

    with pytest.raises(SpecError, match=r"^importing 'typo', which defines featurizers, failed: SyntaxError"):
        import_modules(["typo"], "install it")


def test_two_modules_cannot_register_one_name_but_one_module_may_reload(tmp_path, monkeypatch):
    """Two modules registering `test_mine`: the second silently replaced the first, so a build
    asked for both computed one. Now that is refused; the same function registered again (a
    module reloaded after an edit) still replaces itself."""
    import importlib

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    body = "import featstore\n\n\n@featstore.featurizer('test_mine')\ndef {}(x):\n    return x.{}(1)\n"
    (tmp_path / "mine_a.py").write_text(body.format("f", "mean"))
    (tmp_path / "mine_b.py").write_text(body.format("g", "amax"))
    mine_a = importlib.import_module("mine_a")
    with pytest.raises(SpecError, match=r"^cannot load featurizer 'mine_b:g': importing 'mine_b' failed: SpecError: "
                                        r"featurizer name 'test_mine' is taken by mine_a.f; mine_b.g registers it too"):
        parse_spec("mine_b:g")
    assert parse_spec("test_mine").featurizer.fn is mine_a.f
    (tmp_path / "mine_a.py").write_text(body.format("f", "sum"))
    importlib.reload(mine_a)
    x = torch.ones((2, 3, 3))
    assert parse_spec("test_mine")(x).tolist() == [[3.0] * 3] * 2  # the edited code


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
        ("svd:k=big", r"k takes an int, not 'big'$"),
        ("svd:normalize=maybe",
         r"^in featurizer spec 'svd:normalize=maybe': normalize takes a bool \(true or false\), not 'maybe'$"),
        ("raw:k=1", r"raw accepts: none"),
        ("svd:k=2,normalize=true,k=3", r"^parameter 'k' is given twice in featurizer spec 'svd:k=2,normalize=true,k=3'$"),
        ("svd:dtype=float16,dtype=float32", r"^parameter 'dtype' is given twice"),
        ("SVD", r"^unknown featurizer 'SVD' \(did you mean 'svd'\?\); available: "),
        ("spectrum", r"^unknown featurizer 'spectrum' \(did you mean 'spectral'\?\)"),
        ("stats,svd", (r"^featurizer spec 'stats,svd' names several featurizers: give each its own --featurizer "
                      r"\(--featurizer stats --featurizer svd; in Python, a list\)")),
        ("svd:k=8,stats", r"\(--featurizer svd:k=8 --featurizer stats; "),
        ("stats, svd:k=4", r"\(--featurizer stats --featurizer svd:k=4; "),
        ("svd:k=8,foo", (r"^bad parameter 'foo' in featurizer spec 'svd:k=8,foo'; svd accepts: k=16, normalize=false "
                        r"\(and dtype=float32\|float16\|bfloat16\)$")),
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


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8])
def test_stats_match_numpy_float64(sanity_layer, dtype):
    """Computed in float64 whatever the column's dtype (float16 once summed in float16: 4e-4 off)."""
    values = np.abs(sanity_layer * 1000).astype(dtype) if dtype == np.uint8 else sanity_layer.astype(dtype)
    x = values.astype(np.float64).reshape(len(values), -1)
    expected = np.stack([x.mean(1), x.std(1), np.linalg.norm(x, axis=1), np.abs(x).max(1)], 1)
    out = parse_spec("stats")(torch.from_numpy(values.copy())).numpy()
    assert out.shape == (len(x), 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max())


@pytest.mark.parametrize("k", [4, 16, 20])
def test_svd_matches_numpy_float64_and_pads(sanity_layer, k):
    expected = np.linalg.svd(sanity_layer.astype(np.float64), compute_uv=False)  # (n, 16), descending
    out = parse_spec(f"svd:k={k}")(torch.from_numpy(sanity_layer.copy())).numpy()
    assert out.shape == (len(sanity_layer), k) and out.dtype == np.float32
    m = min(k, 16)
    np.testing.assert_allclose(out[:, :m], expected[:, :m], rtol=1e-4, atol=1e-5 * expected.max())
    assert (out[:, 16:] == 0).all()


def test_norms_match_numpy_float64(sanity_layer):
    a = sanity_layer.astype(np.float64)
    r, c = np.linalg.norm(a, axis=2), np.linalg.norm(a, axis=1)
    expected = np.stack([f(v) for v in (r, c) for f in (lambda v: v.mean(1), lambda v: v.std(1),
                                                          lambda v: v.min(1), lambda v: v.max(1))], 1)
    out = parse_spec("norms")(torch.from_numpy(sanity_layer.copy())).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("shape", [(16, 4096), (4096, 16)])
def test_stats_and_norms_of_lora_factors_stay_within_float32_rounding(shape):
    """65536 values a row (a rank-16 lora_A over 4096 inputs, and lora_B): summed in float32, the
    Frobenius norm erred by 9e-7 of it. 20 rows: computed in blocks of 8 (device.in_blocks)."""
    values = np.random.default_rng(0).standard_normal((20, *shape)).astype(np.float32) * 1e-2
    a = values.astype(np.float64)
    flat = a.reshape(len(a), -1)
    r, c = np.linalg.norm(a, axis=2), np.linalg.norm(a, axis=1)
    references = {
        "stats": np.stack([flat.mean(1), flat.std(1), np.linalg.norm(flat, axis=1), np.abs(flat).max(1)], 1),
        "norms": np.stack([f(v, axis=1) for v in (r, c) for f in (np.mean, np.std, np.min, np.max)], 1)}
    for name, expected in references.items():
        out = parse_spec(name)(torch.from_numpy(values)).double().numpy()
        error = np.abs(out - expected).max(1) / np.abs(expected).max(1)
        assert error.max() < 1.2e-7, (name, error.max())  # float32's rounding of the result: 6e-8


def test_spectral_matches_numpy_float64(sanity_layer):
    s = np.linalg.svd(sanity_layer.astype(np.float64), compute_uv=False)
    p = s / s.sum(1, keepdims=True)
    entropy = -(p * np.log(p)).sum(1)
    expected = np.stack([np.exp(entropy), (s**2).sum(1) / s[:, 0] ** 2, entropy,
                         s.sum(1) / np.sqrt((s**2).sum(1))], 1)
    out = parse_spec("spectral")(torch.from_numpy(sanity_layer.copy())).numpy()
    np.testing.assert_allclose(out, expected, rtol=2e-4)  # tail singular values carry fp32 error
    zero = parse_spec("spectral")(torch.zeros((2, 4, 4))).numpy()
    assert (zero == 0).all()


def test_svd_normalize(sanity_layer):
    s = np.linalg.svd(sanity_layer.astype(np.float64), compute_uv=False)
    out = parse_spec("svd:k=4,normalize=true")(torch.from_numpy(sanity_layer.copy())).numpy()
    np.testing.assert_allclose(out, s[:, :4] / np.linalg.norm(s, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_randproj_is_a_seeded_gaussian_projection(sanity_layer):
    from featstore.featurizers.basic import projection_matrix

    x = torch.from_numpy(sanity_layer.copy())
    out = parse_spec("randproj:dim=64,seed=3")(x)
    r = projection_matrix(256, 64, 3).double().numpy()
    np.testing.assert_allclose(out.numpy(), sanity_layer.reshape(len(x), -1).astype(np.float64) @ r, rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(parse_spec("randproj:dim=64,seed=3")(x), out)  # same seed, same matrix
    assert not torch.equal(parse_spec("randproj:dim=64,seed=4")(x), out)
    big = torch.from_numpy(np.random.default_rng(0).standard_normal((200, 4096)).astype(np.float32))
    ratio = parse_spec("randproj")(big).norm(dim=1) / big.norm(dim=1)  # norms kept on average (JL)
    assert abs(float(ratio.square().mean()) - 1) < 0.05


def test_randproj_draws_its_matrix_once_per_shape_and_seed(sanity_layer, monkeypatch):
    from featstore.featurizers import basic

    drawn = []
    monkeypatch.setattr(basic, "projection_matrix",
                        lambda *args, draw=basic.projection_matrix: drawn.append(args) or draw(*args))
    basic._projection_on.cache_clear()
    x = torch.from_numpy(sanity_layer.copy())
    first = parse_spec("randproj:dim=64,seed=3")(x)
    for column in (x, x[:10] * 2):  # the columns after it, of the same shape: the matrix is kept
        np.testing.assert_allclose(parse_spec("randproj:dim=64,seed=3")(column).numpy(),
                                   (first[: len(column)] * (1 if column is x else 2)).numpy(), rtol=1e-6, atol=1e-6)
    parse_spec("randproj:dim=64,seed=4")(x)
    assert drawn == [(256, 64, 3), (256, 64, 4)]
    basic._projection_on.cache_clear()  # the other tests draw their own


def test_decorated_user_featurizer_params_from_signature():
    import featstore

    @featstore.featurizer("test_rowmax", version="7")
    def rowmax(x, top: int = 2, scale: float = 1.0):
        """Largest row maxima."""
        return x.amax(2).topk(top, dim=1).values * scale

    bound = parse_spec("test_rowmax:top=3")
    assert bound.params == {"top": 3, "scale": 1.0} and bound.identity["version"] == "7"
    assert bound.output_shape((5, 6)) == (3,)  # not declared: a one-row probe finds it
    assert "test_rowmax" in available()


def test_undecorated_function_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "labfeats.py").write_text("def colmean(x, scale: float = 1.0):\n    return x.mean(1) * scale\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bound = parse_spec("labfeats:colmean:scale=2")
    assert bound.name == "labfeats:colmean" and bound.spec == "labfeats:colmean:scale=2.0"
    assert bound.identity["version"].startswith("code:")
    with pytest.raises(SpecError, match=r"cannot load featurizer 'labfeats:nothing'"):
        parse_spec("labfeats:nothing")


def test_a_featurizer_whose_code_cannot_be_hashed_needs_a_pinned_version(tmp_path, monkeypatch):
    """A partial, a callable object or a builtin has no source to hash: its identity would not
    follow its changes (a partial's arguments), so it is refused unless its version is pinned."""
    (tmp_path / "oddfeats.py").write_text(textwrap.dedent("""\
        import functools

        def _scaled(x, factor):
            \"\"\"Scaled first columns.\"\"\"
            return x.flatten(1)[:, :4] * factor

        class Projector:
            def __call__(self, x):
                return x.flatten(1)[:, :2]

        scaled = functools.partial(_scaled, factor=2.0)
        projector = Projector()
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, what in (("oddfeats:scaled", "a functools.partial of '_scaled'"), ("oddfeats:projector",
                       "a Projector object"), ("oddfeats:Projector", "a class (Projector)"), ("torch:abs", "a builtin (abs)")):
        with pytest.raises(SpecError, match=rf"featurizer '{spec}' is {re.escape(what)}, not a function: .* version="):
            parse_spec(spec)
    assert "oddfeats:scaled" not in available()
    import oddfeats

    pinned = register(oddfeats.scaled, "test_pinned_partial", version="3")
    bound = parse_spec("test_pinned_partial")
    assert bound.identity["version"] == "3" and bound.module == "oddfeats"  # not functools, a partial's own module
    assert pinned.doc == "Scaled first columns."
    torch.testing.assert_close(bound(torch.ones(2, 3, 3)), torch.full((2, 4), 2.0))


def test_module_path_found_in_the_current_directory(tmp_path, monkeypatch):
    # The `featstore` command does not put the current directory on sys.path (python -m does).
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cwdfeats.py").write_text("def rowsum(x):\n    return x.sum(2)\n")
    assert parse_spec("cwdfeats:rowsum")(torch.ones(2, 3, 4)).tolist() == [[4.0] * 3] * 2
    assert sys.path[-1] == str(tmp_path)  # appended: never shadows an installed package
    with pytest.raises(SpecError, match=rf"No module named 'nowhere' \(looked in the installed packages and in {tmp_path}\)"):
        parse_spec("nowhere:fn")
    (tmp_path / "needsdep.py").write_text("import not_installed_dep\n")
    with pytest.raises(SpecError, match=r"'needsdep:fn': No module named 'not_installed_dep'$"):
        parse_spec("needsdep:fn")


def test_entry_point_plugins_register(tmp_path, monkeypatch, caplog):
    """Installed plugins register by their entry points; one that fails to load (a missing
    dependency) hides none of the others, and says why wherever it is asked for."""
    import featstore.featurizers as registry
    from featstore.errors import UnknownFeaturizer

    site = tmp_path / "site"
    (site / "plugfeat-1.0.dist-info").mkdir(parents=True)
    (site / "plugfeat-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: plugfeat\nVersion: 1.0\n")
    (site / "plugfeat-1.0.dist-info" / "entry_points.txt").write_text(
        "[featstore.featurizers]\nbroken = brokenfeat:fn\ntrace = plugfeat:trace\n")
    (site / "plugfeat.py").write_text("def trace(x):\n    return x.diagonal(dim1=1, dim2=2).sum(1, keepdim=True)\n")
    (site / "brokenfeat.py").write_text("raise ImportError('brokenfeat needs cupy')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_BROKEN", {})
    why = r"featurizer plugin 'broken' \(brokenfeat:fn\) failed to load: ImportError\('brokenfeat needs cupy'\)"
    assert "trace" in available() and "broken" not in available()
    assert re.search(why, caplog.text)
    assert parse_spec("trace")(torch.eye(3).repeat(2, 1, 1)).tolist() == [[3.0], [3.0]]
    with pytest.raises(SpecError, match=f"^{why}$"):
        parse_spec("broken")
    with pytest.raises(UnknownFeaturizer, match=rf"unknown featurizer 'trcae' \(did you mean 'trace'\?\); .*--import MODULE\); {why}$"):
        parse_spec("trcae")
    listed = subprocess.run([sys.executable, "-m", "featstore.cli", "featurizers"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(site)}, timeout=120, check=False)
    assert listed.returncode == 0 and re.search(r"^trace  \(no parameters", listed.stdout, re.MULTILINE)
    assert re.search(why, listed.stderr), listed.stderr


def test_params_need_simple_defaults():
    import featstore

    with pytest.raises(SpecError, match=r"parameter 'k' needs a default"):
        featstore.featurizer("test_bad")(lambda x, k: x)
    with pytest.raises(SpecError, match=r"dtype 'int8'"):
        parse_spec("svd:dtype=int8")
    with pytest.raises(SpecError, match=r"^featurizer 'test_kw': its function must take the batch tensor as first"):
        featstore.featurizer("test_kw")(lambda *, k=1: None)
    for name in ("", "a/b", "k=v", "x,y", "n" * 201):  # a name lives in paths, specs and lists
        with pytest.raises(SpecError, match=r"use 1-200 characters other than / \\ , = and NUL$"):
            register(lambda x: x, name)
    assert parse_spec("svd:normalize=1").params["normalize"] is True
