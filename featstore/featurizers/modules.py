"""Where featurizers' code lives: the module that defines a function, as another process (a Dask
worker, a later `status --lock`) imports it by name, and importing such modules with errors that
say which module failed and how."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys

from featstore.errors import SpecError


def is_yours(module: str | None) -> bool:
    """Whether featurizers of `module` are a user's, for another process to import by that name:
    not featstore's own, nor a notebook's `__main__` (which no other process can import)."""
    return bool(module) and module != "__main__" and module.partition(".")[0] != "featstore"


def module_of(fn) -> str | None:
    """The module that defines `fn`, as another process imports it: for a script run as
    `__main__` (or re-run as `__mp_main__` in a multiprocessing child, as Dask's local workers
    are), the name of its file (`script_module`), else `__main__` (a notebook)."""
    fn = defining(fn)
    module = getattr(fn, "__module__", None)
    return (script_module(fn) or "__main__") if module in ("__main__", "__mp_main__") else module


def defining(fn):
    """What defines `fn`'s module, name and docs: for a partial (pinned by a version), its function
    (a partial's own `__module__` is functools, its doc functools.partial's)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def origin(fn) -> str:
    """module.qualname of `fn` (module as `module_of`): two registrations of one name from the
    same origin are one function, edited or reloaded; from two origins, a clash."""
    return f"{module_of(fn)}.{getattr(defining(fn), '__qualname__', type(fn).__name__)}"


def script_module(fn) -> str | None:
    """The name the running script's file imports as, if `fn` is defined in it: its `python -m`
    name, or its path from the current directory (`python scripts/train.py` -> `scripts.train`,
    which `import_module` finds from there, as it does `--featurizer scripts.train:fn`); None for
    a function from anywhere else, or a script outside the current directory."""
    main = sys.modules.get("__main__")
    path, code = getattr(main, "__file__", None), getattr(inspect.unwrap(fn), "__code__", None)
    if not path or code is None or os.path.realpath(code.co_filename) != os.path.realpath(path):
        return None
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    relative = os.path.relpath(os.path.realpath(path), os.path.realpath(os.getcwd()))
    parts = relative.removesuffix(".py").split(os.sep)
    return ".".join(parts) if relative.endswith(".py") and all(p.isidentifier() for p in parts) else None


def import_module(name: str):
    """Import a module that defines featurizers, from the installed packages or else the current
    directory (where a user keeps their script: the `featstore` command, unlike `python -m`, does
    not put it on `sys.path`). Appended last, the directory never shadows an installed package."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != name.partition(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)


def import_modules(modules, hint: str) -> None:
    """Import the modules that define featurizers (`import_module`), so that each decorated one is
    known by its name (Dask workers, `status --lock`); one that fails is named, with `hint`."""
    for module in modules:
        try:
            import_module(module)
        except ImportError as e:
            raise SpecError(f"cannot import {module!r}, which defines featurizers ({e}); {hint}") from e
        except Exception as e:  # the module's own code failed (a syntax error, a name clash): say where
            raise SpecError(f"importing {module!r}, which defines featurizers, failed: {described(e)}") from e


def described(e: Exception) -> str:
    """`SyntaxError: expected ':' (feats.py, line 3)`: the kind of error and its message."""
    return f"{type(e).__name__}: {e}"
