"""Builds spread over a Dask cluster: `featstore build --workers N` (a LocalCluster),
`--scheduler tcp://host:8786` (an existing one), or `--devices cuda:0,cuda:1` (a LocalCluster of
one worker per device, each computing on its own).

The client checks the whole build (`planning.plan`) and commits the catalog; each task builds a
group of layers (every split and featurizer of them; ~4 tasks per worker) on a worker: it reads
its columns, computes and publishes the entries straight to the shared store (`builder.execute`
without its commit). Entries are content-addressed and published create-only, so a task that Dask
retries after a lost worker neither duplicates nor half-writes anything. Workers must reach the
store (a shared directory or an object store URL) and import the featurizers (built-ins,
`module:function` specs, entry points).
"""

from __future__ import annotations

import glob
import time
from contextlib import nullcontext, suppress
from typing import Any

from featstore import builder, planning
from featstore import device as devs
from featstore.commit import commit_catalog, commit_finished
from featstore.digest_cache import cached_digests
from featstore.errors import FeatstoreError
from featstore.featurizers import import_modules, parse_spec
from featstore.interrupts import deferred_ctrl_c
from featstore.progress import progress_bar
from featstore.report import BuildReport
from featstore.sources import DEFAULT_LABEL_COLUMN, load_source
from featstore.store import Store

RETRIES = 2  # a task whose worker died is run again this many times
TASKS_PER_WORKER = 4  # tasks of several layers each: few enough to pipeline, enough to balance
_worker_device: str | None = None  # set on each worker of a --devices cluster (_use_device)


def _use_device(device: str) -> str:
    """Run on one worker (client.run): its tasks compute on `device` from now on."""
    global _worker_device
    _worker_device = device
    return device


def _build_layers(dataset: Any, layers: tuple[str, ...], label_column: str | None, specs: tuple[str, ...],
                  identities: tuple[dict, ...], modules: tuple[str, ...], location: str, device: str,
                  rehash: bool) -> BuildReport:
    """One task: every split and featurizer of `layers`, entries only (the client commits), on
    the worker's own device if it has one. Several layers per task, so that the build's pipeline
    reads the next layer while it computes this one (one layer per task was 4x slower on a GPU).
    `modules` define the featurizers: a decorated one is known by its name only once imported;
    each must have the client's identity here, or the worker would compute something else."""
    import_modules(modules, "install it where the Dask workers run")
    bound = tuple(parse_spec(s) for s in specs)
    differ = [f.spec for f, identity in zip(bound, identities) if f.identity != identity]
    if differ:
        raise FeatstoreError(f"featurizer {', '.join(differ)} differs on a Dask worker from the client that started "
                             "the build: its code or a constant it reads (another version of its module installed "
                             "there, or a value the client's script set at run time); install the same code "
                             "where the workers run, and pass run-time values as featurizer parameters")
    source = load_source(dataset, tuple(glob.escape(layer) for layer in layers), label_column)
    return builder.execute(planning.plan(source, bound), Store.open(location), _worker_device or device,
                           rehash=rehash, commit=False)


def _peak_rss() -> int:
    """This process's peak resident set, bytes: VmHWM where there is /proc. Not getrusage's
    ru_maxrss, which survives fork + exec: a worker started by a client that once held 15 GB
    reported 15 GB of its own (measured)."""
    import resource
    import sys

    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def build(dataset: Any, bound: tuple, layers: tuple[str, ...], label_column: str | None, location: str,
          device: str = "auto", rehash: bool = False, progress: bool = False, workers: int = 0,
          scheduler: str | None = None, devices: tuple[str, ...] = (),
          default_label: str = DEFAULT_LABEL_COLUMN) -> BuildReport:
    """Like `featstore.build`, with Dask tasks of a few layers each; with `devices`, on a
    LocalCluster of one single-threaded worker per device, each with its own buffers and streams."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:
        raise FeatstoreError(f"--workers, --scheduler and --devices need Dask ({e}); "
                             "pip install 'featstore[dask]'") from e

    homes = {f.name: f.module for f in bound}  # what workers import
    in_main = [name for name, module in homes.items() if module == "__main__"]
    if in_main:
        raise FeatstoreError(f"featurizer {', '.join(in_main)} is defined in __main__ where no module name reaches "
                             "it (a notebook, an interactive session, a script outside the current directory); Dask "
                             "workers import featurizers by module: move it into a module, or run the script from "
                             "its project's directory")
    modules = tuple(sorted(set(filter(None, homes.values()))))
    source = load_source(dataset, layers, label_column, progress=progress, default_label=default_label)
    started = time.perf_counter()
    build_plan = planning.plan(source, bound)  # every check first, on the client
    store = Store.open(location, create=True)
    report = BuildReport(source.name, store.location, device)
    report.cache = cached_digests(store, source, rehash)
    specs = tuple(f.spec for f in bound)
    # One task at a time per worker; a device's worker gets its share of the cores for the build's
    # reader and writer threads (Dask would set OMP_NUM_THREADS, which cpu_count honours, to 1).
    cores = {"OMP_NUM_THREADS": str(max(1, devs.cpu_count() // len(devices)))} if devices else {}
    cluster = nullcontext() if scheduler else LocalCluster(n_workers=len(devices) or workers, threads_per_worker=1,
                                                           processes=True, dashboard_address=":0", env=cores)
    with cluster, Client(scheduler or cluster) as client:  # the cluster closes on failure too
        if devices:
            addresses = sorted(client.scheduler_info()["workers"])
            for address, assigned in zip(addresses, devices):
                report.worker_devices.update(client.run(_use_device, assigned, workers=[address]))
        n_workers = len(devices) or workers or len(client.scheduler_info()["workers"]) or 1
        per_task = max(1, -(-len(source.layers) // (TASKS_PER_WORKER * n_workers)))
        groups = [tuple(source.layers[i : i + per_task]) for i in range(0, len(source.layers), per_task)]
        identities = tuple(f.identity for f in bound)
        futures = [client.submit(_build_layers, dataset, group, source.label_column, specs, identities, modules,
                                 location, device, rehash, retries=RETRIES, pure=False, key=f"featstore-{group[0]}-{i}")
                   for i, group in enumerate(groups)]
        columns = [len(group) * len(source.splits) for group in groups]
        with deferred_ctrl_c("cancelling the tasks not finished, cataloguing those finished") as interrupted:
            try:
                parts = _gather(client, futures, columns, interrupted, progress and source.name)
            except BaseException:  # a failed task, Ctrl-C: catalogue the tasks that finished, so that gc keeps them
                with suppress(Exception):  # what they returned, while the client can fetch it
                    _add(report, [f.result() for f in futures if f.status == "finished"])
                commit_finished(build_plan, store, report)
                raise
        report.worker_peak_rss = client.run(_peak_rss)
        _add(report, parts)
    commit_catalog(build_plan, store, report)
    report.seconds["plan"] = build_plan.seconds
    report.seconds["total"] = time.perf_counter() - started
    return report


def _gather(client, futures: list, columns: list[int], interrupted: list, progress: str | bool) -> list:
    """What the tasks return, as `client.gather`, but waited for in short steps, so that Ctrl-C
    (`interrupted`: see deferred_ctrl_c) cancels the tasks not finished and raises
    KeyboardInterrupt here, outside Dask's event loop. The first task to fail raises its error. With
    `progress` (the dataset's name), a bar counts the columns of the tasks finished."""
    from dask.distributed import wait

    pending = dict(zip(futures, columns))
    with progress_bar(sum(columns), f"build {progress}", "column", bool(progress)) as bar:
        while pending:
            if interrupted:
                with suppress(Exception):  # a worker already gone has nothing left to say
                    client.run(_quiet_dask_logs)
                    client.run(_quiet_dask_logs, nanny=True)
                client.cancel(list(pending))
                raise KeyboardInterrupt
            with suppress(TimeoutError):
                wait(list(pending), timeout=0.25, return_when="FIRST_COMPLETED")
            for future in [f for f in pending if f.status in ("finished", "error", "cancelled")]:
                if future.status != "finished":
                    future.result()  # raises the task's error
                bar.update(pending.pop(future))
    return client.gather(futures)


def _quiet_dask_logs() -> None:
    """Silence Dask's loggers in a worker (or nanny) process. After Ctrl-C, what its shutdown logs
    is no news: warnings per cancelled task, and now and then a worker's heartbeat to the scheduler
    that closed first, logged as an error with two tracebacks (seen at pyproject's lower bounds)."""
    import logging

    names = [name for name in logging.root.manager.loggerDict if name.partition(".")[0] == "distributed"]
    for name in ["distributed", *names]:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _add(report: BuildReport, parts: list[BuildReport]) -> None:
    """Sum the tasks' reports into the build's."""
    used = sorted({part.device for part in parts if part.computed})
    report.device = ",".join(used) or report.device
    for part in parts:
        report.entries += part.entries
        report.rows += part.rows
        report.seen.update(part.seen)
        report.segments.update(part.segments)
        report.bytes_written += part.bytes_written
        for phase, seconds in part.seconds.items():
            if phase != "total":
                report.seconds[phase] += seconds
