"""What Ctrl-C does while featstore works: the one place that swaps Python's SIGINT handler.

A build defers Ctrl-C to its loop, which stops between columns and catalogues what it finished
(`deferred_ctrl_c`); commands that only read, or remove crash-safely, end at once
(`ends_at_once`). Either way, a KeyboardInterrupt is never raised wherever the main thread happens
to be: there it can land inside a lock of concurrent.futures and leave worker threads waiting on it
forever. Only where Python's own handler is in place (`pythons_ctrl_c`); elsewhere nothing changes.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, wait
from contextlib import contextmanager

from featstore import config


def pythons_ctrl_c() -> bool:
    """Whether Python's own SIGINT handler is in place here, the only one featstore swaps: in the main
    thread (elsewhere signal.signal raises), SIGINT neither ignored (a background job) nor handled by
    the caller."""
    return threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler


@contextmanager
def deferred_ctrl_c(doing: str):
    """Defer Ctrl-C to a loop that checks the list this yields (the build loop: between columns;
    a Dask build: between tasks) and stops cleanly. The first Ctrl-C prints "Ctrl-C: `doing`". A
    second, in the `featstore` command, ends the process at once, as a kill would: what is published
    stays, uncatalogued, for the next build to reuse; in a process of the user's
    (config.SECOND_CTRL_C_EXITS unset), it stops the waiting: the loop's next `waited` starts
    nothing more and raises KeyboardInterrupt there, once the work running then ends. Never from
    the handler: wherever the main thread was (inside a lock of concurrent.futures, say), it would
    leave the pool's threads waiting on that lock for ever."""
    interrupted: list[int] = []
    if not pythons_ctrl_c():
        yield interrupted
        return
    exits = config.SECOND_CTRL_C_EXITS
    first = f"\nCtrl-C: {doing} ({'Ctrl-C again to stop at once' if exits else 'interrupt again to stop waiting'})\n"

    def handler(signum, frame):
        # os.write, not logging or print: the handler may run while the main thread holds their locks
        if interrupted and not exits:
            interrupted.append(signum)
            os.write(2, b"\nCtrl-C again: stopping once the work running now ends\n")
            return
        if interrupted:
            os.write(2, b"\nStopped. The features it finished are in the store, uncatalogued: the next build "
                        b"reuses them unless a gc runs first.\n")
            os._exit(130)
        interrupted.append(signum)
        os.write(2, first.encode())

    with _handling(handler):
        yield interrupted


def waited(futures, interrupted: list, return_when: str = ALL_COMPLETED, pools=()):
    """`concurrent.futures.wait(futures, return_when=...)`, looking every 0.1 s for a second Ctrl-C
    (`interrupted`, from deferred_ctrl_c, holds two): then the `pools` start nothing more and
    KeyboardInterrupt is raised here, in the caller's thread, where it holds no lock."""
    while True:
        if len(interrupted) > 1:
            for pool in pools:
                pool.shutdown(wait=False, cancel_futures=True)
            raise KeyboardInterrupt
        done, pending = wait(futures, timeout=0.1, return_when=return_when)
        if not pending or (done and return_when == FIRST_COMPLETED):
            return done, pending


@contextmanager
def ends_at_once():
    """Ctrl-C ends what runs inside (reading only, or removals that are crash-safe: nothing to
    finish or keep) at once, exit 130. Python's KeyboardInterrupt would first wait for the threads
    hashing columns or reading chunks, for ever should a read hang (a stalled network filesystem)."""
    if not pythons_ctrl_c():
        yield
        return

    def handler(signum, frame):
        os.write(2, b"\nInterrupted.\n")  # not click.echo: the main thread may hold its stream's lock
        os._exit(130)

    with _handling(handler):
        yield


@contextmanager
def _handling(handler):
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
