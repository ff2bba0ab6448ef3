"""A featurizer's code identity: a hash of its normalised source and of what it calls.

Normalised means parsed: comments, blank lines, formatting, docstrings and decorators do not
count. Followed, recursively: the project-local functions it calls (plain names, or `module.attr`
of an imported module), and the simple constants (numbers, strings, tuples of them) it reads from
module globals. Library code (the standard library, site-packages) is not followed: its version is
not ours to track. Pure: no I/O beyond reading source files.
"""

from __future__ import annotations

import ast
import inspect
import sys
import sysconfig
import textwrap
from collections.abc import Callable

import xxhash

_SIMPLE = (bool, int, float, str, bytes, type(None))


def code_hash(fn: Callable) -> str:
    """16 hex digits that change exactly when `fn`'s code or a project-local helper's code does."""
    h = xxhash.xxh3_128()
    for name, text in sorted(_collect(fn, {}).items()):
        h.update(f"{name}\0{text}\0".encode())
    return h.hexdigest()[:16]


def _collect(fn: Callable, seen: dict[str, str]) -> dict[str, str]:
    fn = inspect.unwrap(fn)
    key = f"{fn.__module__}.{fn.__qualname__}"
    if key in seen:
        return seen
    node = _function_node(fn)
    seen[key] = ast.dump(node)
    refs = inspect.getclosurevars(fn)
    for name, value in sorted({**refs.globals, **refs.nonlocals}.items()):
        if _is_simple(value):
            seen[f"{key}:{name}"] = repr(value)
        elif inspect.isfunction(value) and _project_local(value):
            _collect(value, seen)
        elif inspect.ismodule(value):
            for attr in sorted(refs.unbound):
                member = getattr(value, attr, None)
                if inspect.isfunction(member) and _project_local(member):
                    _collect(member, seen)
    return seen


def _function_node(fn: Callable) -> ast.AST:
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as e:
        raise ValueError(f"cannot read the source of {fn!r} to identify it; pass version= explicitly") from e
    node = ast.parse(source).body[0]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        node.decorator_list = []
    for child in ast.walk(node):
        body = getattr(child, "body", None)
        if (isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            child.body = body[1:] or [ast.Pass()]
    return node


def _is_simple(value) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return all(_is_simple(v) for v in value)
    return isinstance(value, _SIMPLE)


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"], sys.base_prefix + "/lib"}
    roots |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    return tuple(sorted(r for r in roots if r))


def _project_local(fn: Callable) -> bool:
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        return False
    return bool(path) and not path.startswith(_library_roots())
