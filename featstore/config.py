"""Where featstore keeps things. One precedence order: CLI flag > environment variable > default.

`FEATSTORE_HOME` (default `~/.cache/featstore`) holds generated presets under `datasets/` and the
default store under `store/`; `FEATSTORE_STORE` points at another store.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("FEATSTORE_HOME") or Path.home() / ".cache" / "featstore").expanduser()


def default_store() -> str:
    return os.environ.get("FEATSTORE_STORE") or str(home() / "store")
