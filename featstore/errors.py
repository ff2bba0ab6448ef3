"""The errors featstore raises.

Every error is a `FeatstoreError`; each subclass also mixes in the builtin it resembles, so callers
can catch either. Messages name the dataset / column / row / file involved and say what to do.
"""

import difflib


def brief(names, limit: int = 12) -> str:
    """`names` for an error message: the first `limit`, then how many in all (a 1k dataset has 129
    columns)."""
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def did_you_mean(name: str, options, cutoff: float = 0.6, what: str = "") -> str:
    """' (did you mean {what}'X'?)' where `name` is close to one of `options` (a typo, another
    case: `SVD`, `Layer_001`), else ''."""
    options = list(options)
    close = difflib.get_close_matches(name, options, n=1, cutoff=cutoff) or \
        difflib.get_close_matches(name.lower(), options, n=1, cutoff=cutoff)
    return f" (did you mean {what}{close[0]!r}?)" if close else ""


class FeatstoreError(Exception):
    """Base class of every error featstore raises on purpose."""

    exit_code = 2


class DatasetError(FeatstoreError, ValueError):
    """`--dataset` could not be resolved or loaded."""


class ColumnError(FeatstoreError, ValueError):
    """A column cannot be read as a numeric tensor (ragged, null, strings, ...)."""


class SpecError(FeatstoreError, ValueError):
    """A featurizer spec such as `svd:k=32` is malformed or names an unknown featurizer."""


class UnknownFeaturizer(SpecError):
    """No featurizer is registered under the name (one of the user's whose module is not imported).
    `broken`: "; why" for each plugin that failed to load, which may be the one registering it."""

    def __init__(self, message: str, broken: str = ""):
        super().__init__(message)
        self.broken = broken


class NotFoundError(FeatstoreError, KeyError):
    """The store holds no such dataset / split / layer / featurizer; the message lists what exists."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StoreError(FeatstoreError, OSError):
    """The store on disk is unreadable, of an unknown format, or could not be written."""


class ReadOnlyStore(StoreError):
    """The store cannot be written here (a read-only mount, another user's files, read-only
    credentials): building or collecting garbage needs a writable store; loading does not."""


class FeaturizerError(FeatstoreError, RuntimeError):
    """A featurizer raised, returned the wrong shape or dtype, returned NaN/inf, or ran out of memory."""


class StaleError(FeatstoreError):
    """`open(..., require_fresh=True)` found features stale for the current data or featurizer code."""

    exit_code = 1
