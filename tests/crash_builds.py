"""Run a `featstore` command once per (point, store), each time in a process forked from this one
and SIGKILLed at its `point`-th storage step (FEATSTORE_CRASH_AT's mechanism, storage.crash_point),
then print {point: exit status} as JSON, a killed one's as -9 (as subprocess reports it).

The crash tests' builds: real processes killed for real, without paying Python's, torch's and
datasets' imports (~2.7 s here) in each of them: they are imported once, before the first fork,
as a DataLoader's workers find them.

    python tests/crash_builds.py '["build", "-d", "data", "--device", "cpu"]' '[[1, "store-1"], ...]'
"""

import json
import os
import sys
import warnings

import datasets  # noqa: F401 (imported once for every build)
import torch  # noqa: F401

from featstore import cli, storage


def run(args: list[str]) -> int:
    """`featstore *args` in this process: its exit status."""
    try:
        cli.main(args, prog_name="featstore")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def main() -> None:
    args, runs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12's warning on fork() beside torch's thread
    codes = {}
    for point, store in runs:
        pid = os.fork()
        if pid == 0:  # the child: never returns into this loop
            storage._crash.update(at=point, count=0)
            code = run([*args, "--store", store])
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        codes[point] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(json.dumps(codes))


if __name__ == "__main__":
    main()
