"""Where featstore keeps things. One precedence order: CLI flag > environment variable > default.

`FEATSTORE_HOME` (default `~/.cache/featstore`) holds generated presets under `datasets/` and the
default store under `store/`; `FEATSTORE_STORE` points at another store.
"""

from __future__ import annotations

import os
from pathlib import Path

# Set by the `featstore` command: there a second Ctrl-C during a build ends the process at once. In
# a process of the user's (a script, a notebook kernel, which a second interrupt must not kill) it
# raises KeyboardInterrupt in the build instead.
SECOND_CTRL_C_EXITS = False


def home() -> Path:
    return Path(os.environ.get("FEATSTORE_HOME") or Path.home() / ".cache" / "featstore").expanduser()


def default_store() -> str:
    return os.environ.get("FEATSTORE_STORE") or str(home() / "store")
