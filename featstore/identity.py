"""A featurizer's code identity: a hash of its normalised source and of what it calls.

Normalised means parsed: comments, blank lines, formatting, docstrings and decorators do not
count. Followed, recursively, wherever the code names them (nested functions, lambdas and
comprehensions included): the project-local functions and classes it reads from module globals
or its closure, directly, through an imported module (`helpers.fn`, `pkg.sub.fn`), behind a
decorator (`functools.wraps`) or a `functools.partial`, and the class of a project-local instance;
and the simple constants it reads (numbers, strings, None, and tuples, lists, sets and dicts of
them), such as `SCALE` or `config.SCALE`. Library code (the standard library, site-packages) is
not followed, its version is not ours to track; except the featurizer's own package, where an
installed plugin's helpers live. Other values (arrays, tensors, open files) are not
hashed: pin `version=` for a featurizer whose results depend on them. Pure: no I/O beyond reading
source files.
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
import sysconfig
import textwrap
from collections.abc import Callable

import xxhash

_SIMPLE = (bool, int, float, complex, str, bytes, type(None))


def code_parts(fn: Callable) -> Callable[[], dict[str, str]]:
    """A function that gives `fn`'s code identity in parts: {how the featurizer reaches it: 16 hex
    digits of its normalised text}, for the featurizer itself (under its own name), each helper
    and each constant it reads (`feat:_helper`, `feat:config.SCALE`, `feat:_helper:EPS`). A part
    changes exactly when that code or constant does, so a changed identity can say what changed.
    The code is read now, as imported (a source file edited since is not what runs); the
    constants at each call, since a script may set them after defining its featurizer. Where the
    code lives does not count: a script run as `__main__` and the same file imported as a module
    agree, and so does a featurizer moved into a package."""
    found = [(path, _digest(text) if isinstance(text, str) else text) for path, text in _Walk(fn).found]

    def parts() -> dict[str, str]:
        return {path: digest if isinstance(digest, str) else _digest(digest()) for path, digest in found}

    return parts


def _digest(text: str) -> str:
    return xxhash.xxh3_64_hexdigest(text.encode())


def parts_hash(parts: dict[str, str]) -> str:
    """16 hex digits for the whole of a featurizer's `code_parts`: its code version."""
    h = xxhash.xxh3_128()
    for path, digest in parts.items():  # in walk order: the featurizer, then depth first in name order
        h.update(f"{path}\0{digest}\0".encode())
    return h.hexdigest()[:16]


def changed_parts(then: dict[str, str] | None, now: dict[str, str] | None) -> list[str]:
    """What differs between two `code_parts`, each by the name the code that reads it uses
    (`_row_norms`, `config.SCALE`); [] where either has no parts (an identity from before them)."""
    if not then or not now:
        return []
    changed = [path for path in {**then, **now} if then.get(path) != now.get(path)]
    return list(dict.fromkeys(path.rpartition(":")[2] for path in changed))


def code_hash(fn: Callable) -> str:
    """`fn`'s code version now: `parts_hash` of its `code_parts`."""
    return parts_hash(code_parts(fn)())


class _Walk:
    """`found`: (how the featurizer reaches it, its normalised text, or a function that reads a
    constant's text) for the featurizer and, depth first in name order, for everything its code
    reads that counts; each definition once."""

    def __init__(self, fn: Callable):
        fn = _unwrapped(fn)
        self.package = fn.__module__.partition(".")[0]
        self.found: list[tuple[str, str | Callable[[], str]]] = []
        self.visited: set[int] = set()
        self.definition(fn.__name__, fn)

    def definition(self, path: str, obj) -> None:
        self.visited.add(id(obj))
        node = _definition_node(obj)
        self.found.append((path, ast.dump(node)))
        for name, read in sorted(_references(obj, node).items()):
            self.value(f"{path}:{name}", read(), read)

    def value(self, path: str, value, read: Callable[[], object] | None = None) -> None:
        if _is_simple(value):
            self.found.append((path, functools.partial(_text_of, read) if read else _text(value)))
        elif isinstance(value, functools.partial):
            self.value(f"{path}.func", value.func)
            for i, arg in enumerate(value.args):
                self.value(f"{path}.args[{i}]", arg)
            for key, arg in sorted(value.keywords.items()):
                self.value(f"{path}.{key}", arg)
        elif inspect.isfunction(_unwrapped(value)) or inspect.isclass(value):
            target = _unwrapped(value)
            if id(target) not in self.visited and self.ours(target):
                self.definition(path, target)
        elif not inspect.ismodule(value) and self.ours(type(value)):
            self.value(f"{path}.__class__", type(value))  # an instance: its class's code, its simple attributes
            for attr, item in sorted(getattr(value, "__dict__", {}).items()):
                if _is_simple(item):
                    self.found.append((f"{path}.{attr}", functools.partial(_text_of, functools.partial(
                        getattr, value, attr))))

    def ours(self, obj) -> bool:
        """Project code: outside the standard library and site-packages, or in the featurizer's
        own package (an installed plugin's helpers are its code too)."""
        package = (getattr(obj, "__module__", None) or "").partition(".")[0]
        return (package == self.package and package != "__main__") or _project_local(obj)


def _references(obj, node: ast.AST) -> dict[str, Callable[[], object]]:
    """A reader (now or later) for each thing the code of `obj` reads by name from its module's
    globals or its closure: plain names, and dotted names through imported modules, read to what
    they end at (`pkg.sub.fn`: fn)."""
    function = inspect.isfunction(obj)
    space = obj.__globals__ if function else getattr(sys.modules.get(obj.__module__), "__dict__", {})
    cells = {var: cell for var, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()) if _filled(cell)} \
        if function else {}

    def reader(name: str) -> Callable[[], object]:
        return (lambda: cells[name].cell_contents) if name in cells else (lambda: space[name])

    found = {}
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load) and (child.id in cells or child.id in space):
            found[child.id] = reader(child.id)
        elif isinstance(child, ast.Attribute) and (dotted := _dotted(child)) and (dotted[0] in cells or dotted[0] in space):
            read = reader(dotted[0])
            for depth, attr in enumerate(dotted[1:], start=1):
                value = read()
                if not inspect.ismodule(value) or not hasattr(value, attr):
                    break
                read = functools.partial(_attribute, read, attr)
                found[".".join(dotted[: depth + 1])] = read
    return found


def _attribute(read: Callable[[], object], attr: str):
    return getattr(read(), attr)


def _text_of(read: Callable[[], object]) -> str:
    """The text of a constant's value now; a constant deleted since counts as such."""
    try:
        return _text(read())
    except (KeyError, AttributeError, ValueError):  # ValueError: an emptied closure cell
        return "<gone>"


def _dotted(node: ast.Attribute) -> list[str] | None:
    """['a', 'b', 'c'] for the expression `a.b.c`; None unless it is names and attributes only."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def _definition_node(obj) -> ast.AST:
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError) as e:
        raise ValueError(f"cannot read the source of {obj!r} to identify it; pass version= explicitly") from e
    try:
        node = ast.parse(source).body[0]
    except SyntaxError as e:  # a lambda inside a longer expression: its lines are not code alone
        raise ValueError(f"cannot parse the source of {obj!r} ({inspect.getsourcefile(obj)}) on its own to "
                         f"identify it; define it with def, or pass version= explicitly") from e
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        node.decorator_list = []
    for child in ast.walk(node):
        body = getattr(child, "body", None)
        if (isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            child.body = body[1:] or [ast.Pass()]
    return node


def _is_simple(value) -> bool:
    if isinstance(value, (tuple, list, set, frozenset)):
        return all(_is_simple(v) for v in value)
    if isinstance(value, dict):
        return all(_is_simple(k) and _is_simple(v) for k, v in value.items())
    return isinstance(value, _SIMPLE)


def _text(value) -> str:
    """repr, but with sets in sorted order: a set of strings iterates in another order per process."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({sorted(map(_text, value))})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_text(k)}: {_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_text, value)) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(map(_text, value)) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _unwrapped(obj):
    try:
        return inspect.unwrap(obj)
    except ValueError:  # a cycle of __wrapped__
        return obj


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"], sys.base_prefix + "/lib"}
    roots |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    return tuple(sorted(r for r in roots if r))


def _project_local(obj) -> bool:
    try:
        path = inspect.getsourcefile(_unwrapped(obj))
    except TypeError:
        return False
    # "<frozen posixpath>": the standard library's modules frozen into the interpreter (os.path, codecs, ...)
    return bool(path) and not path.startswith(("<frozen ", *_library_roots()))
