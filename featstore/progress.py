"""Progress of long work (builds, verify): tqdm's bar on a terminal or in a notebook; where stderr
is neither (a batch job's log), a line at most every `FEATSTORE_PROGRESS_SECONDS` (default 30)
seconds as items finish. A bar's carriage returns make such a log unreadable, and an hour without
output there looks like a hang.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Self

from featstore.errors import FeatstoreError


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """A counter of `total` `unit`s with tqdm's `update`, `set_postfix`, `close` and `disable`:
    disabled unless `enabled`."""
    if enabled and not sys.stderr.isatty() and "ipykernel" not in sys.modules:  # a notebook shows tqdm's widget
        return LogLines(total, desc, unit, _interval())
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled)


def _interval() -> float:
    text = os.environ.get("FEATSTORE_PROGRESS_SECONDS") or "30"
    try:
        return float(text)
    except ValueError:
        raise FeatstoreError(f"FEATSTORE_PROGRESS_SECONDS={text!r} is not a number of seconds") from None


def counted(items: Iterable, desc: str, unit: str, enabled: bool, total: int | None = None) -> Iterator:
    """`items` (`total` of them: by default their len), each counted once the loop body has done with it."""
    with progress_bar(len(items) if total is None else total, desc, unit, enabled) as bar:
        for item in items:
            yield item
            bar.update()


class LogLines:
    """`build 1k: 64/256 columns (25%) in 12 s, about 36 s left; computed=60, reused=4`, to
    stderr, when an item finishes `every` seconds or more after the last line (or the start)."""

    disable = False

    def __init__(self, total: int, desc: str, unit: str, every: float):
        self.total, self.desc, self.every = total, desc, every
        self.units = unit[:-1] + "ies" if unit.endswith("y") else unit + "s"
        self.n, self.postfix = 0, ""
        self.started = self.last = time.monotonic()

    def set_postfix(self, refresh: bool = False, **fields) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in fields.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last < self.every or not self.n:
            return
        self.last, spent = now, now - self.started
        left = f", about {_duration(spent / self.n * (self.total - self.n))} left" if self.n < self.total else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.units} ({100 * self.n / max(self.total, 1):.0f}%) in "
              f"{_duration(spent)}{left}{'; ' + self.postfix if self.postfix else ''}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _duration(seconds: float) -> str:
    """`42 s`, `17 min`, `2.5 h`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
