"""A featurizer's identity follows its code exactly: comments, blank lines and docstrings do not
count; a changed body, helper or constant does."""

import importlib.util
import textwrap

import pytest

from featstore.identity import code_hash

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
    source = BASE.replace("def helper(x):\n    return x * SCALE", "import numpy\n\n\ndef helper(x):\n"
                                                                   "    return numpy.asarray(x) * SCALE")
    assert len(code_hash(load(tmp_path, source, "a"))) == 16  # numpy's functions are not hashed


def test_functions_without_source_need_a_pinned_version():
    with pytest.raises(ValueError, match="pass version= explicitly"):
        code_hash(eval("lambda x: x"))  # no source file to read
