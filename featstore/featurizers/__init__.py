"""The featurizer registry and the spec syntax (`svd:k=32`).

A featurizer is a named, versioned batch function `fn(x, **params) -> Tensor` mapping a tensor of
shape `(n_rows, *value_shape)` (stored dtype) to `(n_rows, *output_shape(value_shape, **params))`
float32. Built-ins register themselves on import; `register` is how new ones join.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from featstore.errors import SpecError
from featstore.keys import featurizer_identity, is_safe_name

__all__ = ["BoundFeaturizer", "Featurizer", "available", "get", "parse_spec", "register"]

_REGISTRY: dict[str, Featurizer] = {}


@dataclass(frozen=True)
class Featurizer:
    name: str
    fn: Callable[..., Any]
    version: str
    params: dict[str, Any]  # the defaults, which also fix each parameter's type
    output_shape: Callable[..., tuple[int, ...]]
    doc: str = ""


@dataclass(frozen=True)
class BoundFeaturizer:
    """A featurizer with every parameter set: what a spec string means."""

    featurizer: Featurizer
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.featurizer.name

    @property
    def spec(self) -> str:
        """Canonical spec: the name, then every parameter in sorted order (`svd:k=16`)."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_format(v)}" for k, v in sorted(self.params.items()))

    @property
    def identity(self) -> dict[str, Any]:
        return featurizer_identity(self.name, self.params, self.featurizer.version)

    def output_shape(self, value_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.featurizer.output_shape(tuple(value_shape), **self.params))

    def __call__(self, x):
        return self.featurizer.fn(x, **self.params)


def register(name: str, *, version: str, output_shape: Callable[..., tuple[int, ...]], **params: Any):
    """Decorator: register `fn` as featurizer `name` with parameter defaults `params`."""
    if not is_safe_name(name) or ":" in name:
        raise SpecError(f"featurizer name {name!r} must be 1-200 letters, digits, '_', '-' or '.'")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = Featurizer(name, fn, str(version), dict(params), output_shape, (fn.__doc__ or "").strip())
        return fn

    return decorate


def available() -> dict[str, Featurizer]:
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Featurizer:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown featurizer {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def parse_spec(spec: str) -> BoundFeaturizer:
    """Parse `name` or `name:key=value,key=value` into a featurizer with all parameters bound."""
    name, _, rest = spec.strip().partition(":")
    featurizer = get(name)
    params = dict(featurizer.params)
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, raw = item.partition("=")
        if not eq or key not in featurizer.params:
            accepted = ", ".join(f"{k}={_format(v)}" for k, v in featurizer.params.items()) or "none"
            raise SpecError(f"bad parameter {item!r} in featurizer spec {spec!r}; {name} accepts: {accepted}")
        params[key] = _coerce(raw, featurizer.params[key], spec)
    return BoundFeaturizer(featurizer, params)


def _coerce(raw: str, default: Any, spec: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in {"true", "false", "1", "0"}:
                raise ValueError(raw)
            return raw.lower() in {"true", "1"}
        return type(default)(raw)
    except ValueError:
        raise SpecError(f"in featurizer spec {spec!r}: {raw!r} is not a valid {type(default).__name__}") from None


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _load_builtins() -> None:
    from featstore.featurizers import basic  # noqa: F401  (registers raw, stats, svd)
