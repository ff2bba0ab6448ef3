"""The featurizer registry and the spec syntax (`svd:k=32`, `mypkg.mod:fn:k=3,dtype=float16`).

A featurizer is a named batch function `fn(x, **params) -> Tensor`: `x` holds rows
`(n, *value_shape)` in the stored dtype (on the build's device), the result is `(n, *out_shape)`.
Its parameters are the keyword arguments of `fn` with defaults. Register one with

    @featstore.featurizer("mine")            # identity follows the code (see featstore.identity)
    def mine(x, k: int = 4): ...

    @featstore.featurizer("mine", version="2")   # or pin the identity explicitly

Built-ins register on first use; so do modules named by a `featstore.featurizers` entry point and
functions named on the command line as `module.path:function`. Every spec also takes `dtype=`
(float32, float16, bfloat16): the stored dtype, part of the entry's identity.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from featstore.errors import SpecError, UnknownFeaturizer, did_you_mean
from featstore.featurizers.modules import (
    defining,
    described,
    import_module,
    import_modules,
    is_yours,
    module_of,
    origin,
)
from featstore.keys import canonical_json, featurizer_identity

__all__ = ["STORED_DTYPES", "BoundFeaturizer", "Featurizer", "available", "featurizer", "get", "import_module",
           "import_modules", "is_yours", "parse_spec"]

STORED_DTYPES = ("float32", "float16", "bfloat16")
BUILTINS = ("raw", "stats", "svd", "spectral", "randproj", "norms")  # names no other code may register
_PARAM_TYPES = (bool, int, float, str)
_REGISTRY: dict[str, Featurizer] = {}
_BROKEN: dict[str, str] = {}  # entry point name -> why its plugin failed to load
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Featurizer:
    name: str
    fn: Callable[..., Any]
    params: dict[str, Any]  # defaults from fn's signature; they also fix each parameter's type
    pinned: str | Callable[[], dict[str, str]]  # version=, or identity.code_parts(fn)
    output_shape: Callable[..., tuple[int, ...]] | None = None  # (value_shape, **params) -> shape
    per_row: bool = True  # row i of the output depends on row i of the input only: batchable
    doc: str = ""

    def versioned(self) -> tuple[str, dict[str, str] | None]:
        """(the pinned version, None), or ("code:<hash of fn, the helpers it uses and the
        constants it reads>", those parts), the constants as they are now."""
        if isinstance(self.pinned, str):
            return self.pinned, None
        from featstore.identity import parts_hash

        code = self.pinned()
        return f"code:{parts_hash(code)}", code

    @property
    def version(self) -> str:
        return self.versioned()[0]

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""


@dataclass(frozen=True)
class BoundFeaturizer:
    """A featurizer with every parameter and the stored dtype set: what a spec string means."""

    featurizer: Featurizer
    params: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"

    @property
    def name(self) -> str:
        return self.featurizer.name

    @functools.cached_property
    def spec(self) -> str:
        """Canonical spec: the name, then parameters that differ from their defaults (sorted), then
        dtype when not float32: `svd`, `svd:k=32`, `svd:k=32,dtype=bfloat16`."""
        defaults = self.featurizer.params
        items = [f"{k}={_format(v)}" for k, v in sorted(self.params.items()) if v != defaults[k]]
        items += [f"dtype={self.dtype}"] if self.dtype != "float32" else []
        return self.name + (":" + ",".join(items) if items else "")

    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """Kept once computed, for the build that parsed this spec (a no-op build of 1k asks 1,536
        times); a featurizer's code is fixed at registration, the constants it reads are read here."""
        version, code = self.featurizer.versioned()
        return featurizer_identity(self.name, self.params, version, self.dtype, code)

    @property
    def module(self) -> str | None:
        """The module that defines the function, by the name another process imports it as:
        importing it registers the featurizer (Dask workers and `status --lock` import it to know
        a decorated featurizer by its name). For a script run as `__main__`, the name of its file
        (`script_module`), or `__main__` where it has none (a notebook, an interactive session)."""
        return module_of(self.featurizer.fn)

    def output_shape(self, value_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The declared output shape of one row, or the shape a one-row probe of zeros gives."""
        if self.featurizer.output_shape is not None:
            return tuple(self.featurizer.output_shape(tuple(value_shape), **self.params))
        key = (canonical_json(self.identity), tuple(value_shape))  # re-registering a name changes the identity
        if key not in _PROBED:
            _PROBED[key] = _probe_shape(self, tuple(value_shape))
        return _PROBED[key]

    def __call__(self, x):
        """Without autograd: features need no gradients, and a featurizer built on an nn.Module
        would otherwise return a tensor that requires them (and keep its graph in memory)."""
        import torch

        with torch.no_grad():
            return self.featurizer.fn(x, **self.params)


def featurizer(name: str | None = None, *, version: str | None = None,
               output_shape: Callable[..., tuple[int, ...]] | None = None, per_row: bool = True):
    """Decorator: register `fn` as featurizer `name` (default: the function's name).

    Without `version`, the identity hashes the function's normalised source and that of the
    project-local helpers it calls, so editing the code makes new entries and editing comments,
    blank lines or docstrings does not. With `version`, only that string counts; without it, `fn`
    must be a function (def or lambda): a partial, an object with __call__ or a builtin has no code
    to hash, and is refused.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        register(fn, name or getattr(fn, "__name__", ""), version=version, output_shape=output_shape, per_row=per_row)
        return fn

    return decorate


def register(fn: Callable[..., Any], name: str, *, version: str | None = None,
             output_shape: Callable[..., tuple[int, ...]] | None = None, per_row: bool = True) -> Featurizer:
    from featstore.identity import code_parts

    if version is None:
        _check_hashable(fn, name)
    if not name or any(c in name for c in "/\\\0,=") or len(name) > 200:
        raise SpecError(f"featurizer name {name!r}: use 1-200 characters other than / \\ , = and NUL")
    module = module_of(fn) or ""
    if name in BUILTINS and not module.startswith(__name__ + "."):
        raise SpecError(f"featurizer name {name!r} is featstore's built-in {name}; register "
                        f"{module}.{getattr(fn, '__qualname__', fn)} under another name")
    old = _REGISTRY.get(name)
    if old is not None and origin(old.fn) != origin(fn):  # the same function again (reloaded) replaces it
        raise SpecError(f"featurizer name {name!r} is taken by {origin(old.fn)}; {origin(fn)} registers it too: "
                        "give one of them another name")
    params = _signature_params(fn, name)
    pinned = str(version) if version is not None else code_parts(fn)
    entry = Featurizer(name, fn, params, pinned, output_shape, per_row, inspect.getdoc(defining(fn)) or "")
    _REGISTRY[name] = entry
    return entry


def _check_hashable(fn, name: str) -> None:
    """The error for a featurizer whose code cannot be hashed, so that no identity would follow its
    changes: anything but a function defined with def or lambda (a functools.partial, an instance
    with __call__, a class, a builtin), unless its version is pinned."""
    if inspect.isfunction(inspect.unwrap(fn)):
        return
    if isinstance(fn, functools.partial):
        what = f"a functools.partial of {getattr(fn.func, '__name__', fn.func)!r}"
        instead = ("give that function its arguments as parameters with defaults and set them in the spec "
                   "(module.path:function:factor=2.0), or write a function that calls it")
    else:
        kind = "class" if inspect.isclass(fn) else "builtin" if inspect.isbuiltin(fn) else f"{type(fn).__name__} object"
        what = f"a {kind}" + (f" ({fn.__name__})" if hasattr(fn, "__name__") else "")
        instead = "write a function (def) that calls it"
    label = f"featurizer {name!r}" if name else "this featurizer"
    raise SpecError(f"{label} is {what}, not a function: featstore hashes a featurizer's code to know when it changes, "
                    f"and only a function's can be; {instead}, or pin its identity with an explicit version "
                    "(@featstore.featurizer(name, version=\"1\"), bumped by hand when it changes)")


def available() -> dict[str, Featurizer]:
    _load_plugins()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Featurizer:
    _load_builtins()
    if name not in _REGISTRY:  # scanning installed packages for plugins costs 35 ms on a big venv
        _load_plugins()
    if name in _BROKEN and name not in _REGISTRY:
        raise SpecError(_BROKEN[name])
    if name not in _REGISTRY and ":" in name:
        _import_target(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        broken = "".join(f"; {why}" for why in _BROKEN.values())  # it may be what registers `name`
        raise UnknownFeaturizer(f"unknown featurizer {name!r}{did_you_mean(name, _REGISTRY)}; available: "
                                f"{', '.join(sorted(_REGISTRY))} "
                                f"(or name your own as module.path:function, or import the module that registers it: "
                                f"--import MODULE){broken}", broken) from None


def _check_several(text: str, spec: str) -> None:
    """The error for one spec that names several featurizers (`stats,svd`, `svd:k=8,stats`): each
    part between its commas starts with a known featurizer's name."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and all(p.partition(":")[0] in _REGISTRY for p in parts):
        raise SpecError(f"featurizer spec {spec!r} names several featurizers: give each its own --featurizer "
                        f"(--featurizer {' --featurizer '.join(parts)}; in Python, a list); within a spec, commas "
                        "separate its parameters (svd:k=8,normalize=true)")


def parse_spec(spec: str, dtype: str | None = None) -> BoundFeaturizer:
    """Parse `name[:k=v,...]` or `module.path:function[:k=v,...]`; `dtype` is the default stored
    dtype for specs that do not set one."""
    _load_builtins()
    text = spec.strip()
    head, _, rest = text.partition(":")
    if "," in head:
        _check_several(text, spec)
    function, _, after = rest.partition(":")
    if head not in _REGISTRY and function.isidentifier():  # module.path:function[:params]
        head, rest = f"{head}:{function}", after
    featurizer_ = get(head)
    params = dict(featurizer_.params)
    stored, given = dtype or "float32", set()
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, raw = item.partition("=")
        if key in given:
            raise SpecError(f"parameter {key!r} is given twice in featurizer spec {spec!r}")
        given.add(key)
        if eq and key == "dtype":
            stored = raw
            continue
        if not eq or key not in featurizer_.params:
            accepted = ", ".join(f"{k}={_format(v)}" for k, v in featurizer_.params.items()) or "none"
            if not eq:
                _check_several(text, spec)
            raise SpecError(f"bad parameter {item!r} in featurizer spec {spec!r}; {head} accepts: {accepted} "
                            "(and dtype=float32|float16|bfloat16)")
        params[key] = _coerce(key, raw, featurizer_.params[key], spec)
    if stored not in STORED_DTYPES:
        raise SpecError(f"dtype {stored!r} in featurizer spec {spec!r}: use one of {', '.join(STORED_DTYPES)}")
    return BoundFeaturizer(featurizer_, params, stored)


def _signature_params(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    parameters = list(inspect.signature(fn).parameters.values())
    if not parameters or parameters[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                     inspect.Parameter.POSITIONAL_OR_KEYWORD):
        raise SpecError(f"featurizer {name!r}: its function must take the batch tensor as first argument")
    params = {}
    for p in parameters[1:]:
        if p.default is inspect.Parameter.empty or not isinstance(p.default, _PARAM_TYPES):
            raise SpecError(f"featurizer {name!r}: parameter {p.name!r} needs a default of type bool, int, "
                            "float or str")
        params[p.name] = p.default
    return params


def _coerce(key: str, raw: str, default: Any, spec: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in {"true", "false", "1", "0"}:
                raise ValueError(raw)
            return raw.lower() in {"true", "1"}
        return type(default)(raw)
    except ValueError:
        kind = "a bool (true or false)" if isinstance(default, bool) else "an int" if isinstance(default, int) \
            else "a float"  # a str default takes any value
        raise SpecError(f"in featurizer spec {spec!r}: {key} takes {kind}, not {raw!r}") from None


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


_PROBED: dict[tuple[bytes, tuple[int, ...]], tuple[int, ...]] = {}


def _probe_shape(bound: BoundFeaturizer, value_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output row shape of a featurizer on one row of zeros (float32, CPU)."""
    import torch

    probe = f"a probe batch of 1 row of shape {value_shape}"  # the caller names the featurizer and column
    try:
        out = bound(torch.zeros((1, *value_shape), dtype=torch.float32))
    except Exception as e:  # a user's function may raise anything
        raise SpecError(f"{probe} failed: {e!r}") from e
    if not isinstance(out, torch.Tensor) or out.ndim < 1 or len(out) != 1:
        got = f"a tensor of shape {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        fix = " (a NumPy array: return torch.from_numpy(a).to(x.device))" if got == "ndarray" else ""
        raise SpecError(f"{probe} returned {got}; a featurizer must return a tensor with one row per input row{fix}")
    if not out.is_floating_point():  # features are stored as floats: say so before anything is computed
        raise SpecError(f"{probe} returned a {out.dtype} tensor; a featurizer must return a floating one "
                        "(cast it: .float())")
    return tuple(out.shape[1:])


def _import_target(target: str) -> None:
    """Import `module.path:function` (`import_module`); register the function under that name
    unless the module registered it under its own name."""
    module_name, _, function = target.partition(":")
    try:
        module = import_module(module_name)
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and e.name == module_name.partition(".")[0]  # not a dependency
        where = f" (looked in the installed packages and in {os.getcwd()})" if missing else ""
        raise SpecError(f"cannot load featurizer {target!r}: {e}{where}") from e
    except Exception as e:  # the module's own code failed (a syntax error, a name clash): say where
        raise SpecError(f"cannot load featurizer {target!r}: importing {module_name!r} failed: {described(e)}") from e
    try:
        fn = getattr(module, function)
    except AttributeError as e:
        raise SpecError(f"cannot load featurizer {target!r}: {e}") from e
    if not any(f.fn is fn for f in _REGISTRY.values()):
        register(fn, target)
    else:
        _REGISTRY.setdefault(target, next(f for f in _REGISTRY.values() if f.fn is fn))


_plugins_loaded = False


def _load_builtins() -> None:
    from featstore.featurizers import basic, spectral  # noqa: F401  (register the built-ins)


def _load_plugins() -> None:
    """Built-ins, then every `featstore.featurizers` entry point (a module, or a function
    registered under the entry point's name)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    _load_builtins()
    for ep in entry_points(group="featstore.featurizers"):
        try:
            loaded = ep.load()
            if callable(loaded) and not any(f.fn is loaded for f in _REGISTRY.values()):
                register(loaded, ep.name)
        except Exception as e:  # noqa: BLE001 (one broken plugin must not hide the others; asked for, it says why)
            _BROKEN[ep.name] = f"featurizer plugin {ep.name!r} ({ep.value}) failed to load: {e!r}"
            log.warning("%s", _BROKEN[ep.name])
