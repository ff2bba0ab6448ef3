"""A featurizer's identity follows its code exactly: comments, blank lines and docstrings do not
count; a changed body, helper or constant does."""

import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

from featstore.identity import changed_parts, code_hash, code_parts, parts_hash

BASE = '''
SCALE = 2.0


def helper(x):
    return x * SCALE


def feat(x, k: int = 3):
    """Doc."""
    return helper(x)[:, :k]
'''


def load(tmp_path, source: str, tag: str):
    folder = tmp_path / tag
    folder.mkdir()
    (folder / "userfeat.py").write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location("userfeat", folder / "userfeat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.feat


@pytest.mark.parametrize(
    "edited, same",
    [
        (BASE.replace('"""Doc."""', '"""A longer docstring\n    over two lines."""'), True),
        (BASE.replace("return helper(x)[:, :k]", "# a comment\n\n    return helper(x)[:, :k]  # trailing"), True),
        (BASE.replace("def feat(x, k: int = 3):", "@staticmethod\ndef feat(x, k: int = 3):").replace(
            "@staticmethod\n", ""), True),
        (BASE.replace("return x * SCALE", "return x * SCALE + 1"), False),  # a helper changed
        (BASE.replace("SCALE = 2.0", "SCALE = 3.0"), False),  # a constant it reads changed
        (BASE.replace("[:, :k]", "[:, : k + 0]"), False),  # the body changed
    ],
)
def test_code_hash_follows_code_not_comments(tmp_path, edited, same):
    assert (code_hash(load(tmp_path, BASE, "a")) == code_hash(load(tmp_path, edited, "b"))) is same


def test_library_code_is_not_followed(tmp_path):
    # os.path.join and codecs live in modules frozen into the interpreter ("<frozen posixpath>"):
    # they were taken for project code whose source could not be read, and the build failed
    source = BASE.replace("def helper(x):\n    return x * SCALE",
                          "import codecs\nimport os\n\nimport numpy\n\n\ndef helper(x):\n"
                          "    os.path.join('a', 'b'), codecs.lookup('utf-8')\n    return numpy.asarray(x) * SCALE")
    assert list(code_parts(load(tmp_path, source, "a"))()) == ["feat", "feat:helper", "feat:helper:SCALE"]


def test_functions_without_source_need_a_pinned_version():
    with pytest.raises(ValueError, match="pass version= explicitly"):
        code_hash(eval("lambda x: x"))  # no source file to read


# A user's package: the featurizer reaches its helpers in the ways research code does.
PACKAGE = {
    "userpkg/__init__.py": "",
    "userpkg/config.py": "SCALE = 2.0\nWEIGHTS = [1.0, 2.0]\n",
    "userpkg/ops/__init__.py": "",
    "userpkg/ops/maths.py": '''
import functools


def double(x):
    return x * 2


def unused(x):
    return x - 1


def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args)
    return wrapper


@logged
def decorated(x):
    return x + 1


def power(x, p):
    return x ** p


class Normaliser:
    """Scale to a norm."""

    eps = 1e-6

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, x):
        return x / (abs(x) + self.eps) * self.scale
''',
    "userpkg/feat.py": '''
import functools

import userpkg.ops.maths
from userpkg import config
from userpkg.ops.maths import Normaliser, decorated

SQUARE = functools.partial(userpkg.ops.maths.power, p=2)
NORM = Normaliser(scale=3.0)


def feat(x):
    rows = [userpkg.ops.maths.double(r) for r in x]  # a helper two modules down, in a comprehension
    scaled = list(map(lambda r: decorated(r) * config.SCALE, rows))
    return NORM(SQUARE(sum(scaled))) * config.WEIGHTS[0] + Normaliser(1.0)(x)
''',
}


@pytest.fixture
def load_package(tmp_path, monkeypatch):
    """Write PACKAGE with `edits` ({file: (old, new)}) applied under its own folder, import it
    afresh and return its `feat`."""
    def load(tag: str, edits: dict[str, tuple[str, str]]):
        for name in [n for n in sys.modules if n == "userpkg" or n.startswith("userpkg.")]:
            monkeypatch.delitem(sys.modules, name)
        for path, text in PACKAGE.items():
            if path in edits:
                assert edits[path][0] in text
                text = text.replace(*edits[path])
            (tmp_path / tag / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / tag / path).write_text(text)
        monkeypatch.syspath_prepend(str(tmp_path / tag))
        try:
            return importlib.import_module("userpkg.feat").feat
        finally:
            sys.path.remove(str(tmp_path / tag))
    yield load
    for name in [n for n in sys.modules if n == "userpkg" or n.startswith("userpkg.")]:
        del sys.modules[name]


@pytest.mark.parametrize(
    "path, old, new, same",
    [
        ("userpkg/ops/maths.py", "return x * 2", "return x * 2  # doubled", True),
        ("userpkg/ops/maths.py", '"""Scale to a norm."""', '"""Scale to a norm.\n\n    Longer."""', True),
        ("userpkg/ops/maths.py", "return x - 1", "return x - 2", True),  # a function it does not call
        ("userpkg/ops/maths.py", "return x * 2", "return x * 3", False),  # pkg.sub.fn, in a comprehension
        ("userpkg/ops/maths.py", "return x + 1", "return x + 2", False),  # behind functools.wraps, in a lambda
        ("userpkg/ops/maths.py", "return x ** p", "return x ** p + 0", False),  # a partial's function
        ("userpkg/feat.py", "p=2)", "p=3)", False),  # a partial's argument
        ("userpkg/ops/maths.py", "(abs(x) + self.eps)", "(abs(x) + 2 * self.eps)", False),  # a class's method
        ("userpkg/ops/maths.py", "eps = 1e-6", "eps = 1e-5", False),  # a class attribute
        ("userpkg/feat.py", "Normaliser(scale=3.0)", "Normaliser(scale=4.0)", False),  # an instance's attribute
        ("userpkg/config.py", "SCALE = 2.0", "SCALE = 2.5", False),  # module.CONSTANT
        ("userpkg/config.py", "[1.0, 2.0]", "[1.0, 3.0]", False),  # a list constant
    ],
)
def test_code_hash_follows_helpers_wherever_the_code_reaches_them(load_package, path, old, new, same):
    assert (code_hash(load_package("a", {})) == code_hash(load_package("b", {path: (old, new)}))) is same


def test_a_set_constant_hashes_the_same_in_every_process(tmp_path):
    """Strings hash differently per process, and so does a set's order: the identity must not."""
    (tmp_path / "setfeat.py").write_text('TAGS = frozenset({"alpha", "beta", "gamma", "delta"})\n\n\n'
                                         'def feat(x):\n    return x * len(TAGS)\n')
    script = "import setfeat; from featstore.identity import code_hash; print(code_hash(setfeat.feat))"
    hashes = {subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(1, 6)}
    assert len(hashes) == 1 and len(hashes.pop().strip()) == 16


def test_where_the_code_lives_does_not_count(tmp_path):
    """A training script that registers its featurizer (run as __main__) and the CI job that checks
    it (`--featurizer script:feat`, the same file imported) must agree; so must a featurizer moved
    into a package."""
    (tmp_path / "script.py").write_text(BASE + '\n\nif __name__ == "__main__":\n'
                                               '    from featstore.identity import code_hash\n'
                                               '    print(code_hash(feat))\n')
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "__init__.py").write_text("")
    (tmp_path / "lab" / "feats.py").write_text(BASE)
    as_main = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, check=True)
    imported = "from featstore.identity import code_hash; import script, lab.feats; " \
               "print(code_hash(script.feat)); print(code_hash(lab.feats.feat))"
    as_modules = subprocess.run([sys.executable, "-c", imported], cwd=tmp_path, capture_output=True, text=True,
                                check=True)
    assert as_modules.stdout.split() == as_main.stdout.split() * 2


@pytest.mark.parametrize("edit, same", [("return x * 2", True), ("return x * 3", False)])
def test_an_installed_plugin_s_own_helpers_count(tmp_path, monkeypatch, edit, same):
    """A plugin installed in site-packages is library code to everyone else, but a helper in its
    own package is part of its featurizer; other installed packages are still not followed."""
    hashes = []
    for tag, body in (("a", "return x * 2"), ("b", edit)):
        site = tmp_path / tag / "site-packages"
        (site / "plugin").mkdir(parents=True)
        (site / "plugin" / "__init__.py").write_text("")
        (site / "plugin" / "helpers.py").write_text(f"def double(x):\n    {body}\n")
        (site / "plugin" / "feats.py").write_text("from plugin.helpers import double\nfrom otherlib import triple\n\n\n"
                                                 "def feat(x):\n    return triple(double(x))\n")
        (site / "otherlib.py").write_text(f"def triple(x):\n    return x * {len(hashes) + 3}\n")  # differs: not followed
        for name in [n for n in sys.modules if n.split(".")[0] in ("plugin", "otherlib")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.syspath_prepend(str(site))
        hashes.append(code_hash(importlib.import_module("plugin.feats").feat))
        sys.path.remove(str(site))
    for name in [n for n in sys.modules if n.split(".")[0] in ("plugin", "otherlib")]:
        del sys.modules[name]
    assert (hashes[0] == hashes[1]) is same


def test_a_lambda_inside_a_longer_expression_needs_def_or_a_pinned_version(tmp_path):
    source = "import featstore.featurizers\n\nFEAT = featstore.featurizers.register(\n" \
             "    lambda x: x.flatten(1).mean(1, keepdim=True), 'lam')\n"
    with pytest.raises(ValueError, match="define it with def, or pass version="):
        load(tmp_path, source.replace("FEAT", "feat"), "a")


def test_constants_count_as_they_are_when_the_build_asks(tmp_path):
    """A script may set a module constant after its featurizer is defined (from its arguments):
    the identity must follow the value the featurizer will compute with, not the one at import."""
    feat = load(tmp_path, BASE, "a")
    parts = code_parts(feat)
    before = parts()
    feat.__globals__["SCALE"] = 3.0
    after = parts()
    feat.__globals__["SCALE"] = 2.0
    assert {path for path in before if before[path] != after[path]} == {"feat:helper:SCALE"}
    assert parts() == before and parts_hash(before) == code_hash(feat) != parts_hash(after)


def test_a_changed_identity_names_what_changed_by_the_names_the_code_uses(load_package):
    before = code_parts(load_package("a", {}))()
    after = code_parts(load_package("b", {"userpkg/config.py": ("SCALE = 2.0", "SCALE = 2.5"),
                                          "userpkg/ops/maths.py": ("return x * 2", "return x * 3")}))()
    assert list(before) == list(after) and next(iter(before)) == "feat"  # the featurizer itself, first
    assert changed_parts(before, after) == ["config.SCALE", "userpkg.ops.maths.double"]
    assert changed_parts(before, before) == [] and changed_parts(None, after) == []  # an older store's rows
