"""Incremental builds on the 1k preset (128 layers x 2 splits, `stats` + `svd`): the bars of the
incremental-caching issue, measured side by side in one process.

    python benchmarks/bench_incremental.py [--out benchmarks/results]

On a private copy of the preset: a cold build; a no-op rebuild; `status`; `verify` (every chunk
of every entry); one layer's bytes changed in place (same file size, so only the mtime tells) and
rebuilt, against a cold build of that one layer alone; 10% rows appended to every split and
rebuilt (on copies of the store). Every case is run 3 times (median). Prints the table and
writes benchmarks/results/incremental.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np

import featstore
from featstore import presets
from featstore.sources import load_source

FEATURIZERS = ["stats", "svd"]
REPEAT = 3  # runs of each case: the median is reported
LAYER = "layer_064"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median_of(n: int, fn):
    """(median seconds, result of that run) of `n` runs of `fn`."""
    runs = sorted((timed(fn) for _ in range(n)), key=lambda r: r[0])
    return runs[n // 2]


def patch_one_value(path: Path, layer: str) -> None:
    """Add 1 to the first value of `layer` in split train, in place: the file keeps its size."""
    split = load_source(str(path), (layer,)).splits["train"]
    _, parts = split.parts(layer)
    address = parts[0].__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if len(fields) == 6 and lo <= address < hi:
                file, offset = fields[5].strip(), address - lo + int(fields[2], 16)
                break
    value = np.frombuffer(os.pread(os.open(file, os.O_RDONLY), 4, offset), np.float32)[0]
    fd = os.open(file, os.O_WRONLY)
    try:
        os.pwrite(fd, np.float32(value + 1).tobytes(), offset)
    finally:
        os.close(fd)


def copy_of_1k(folder: Path) -> Path:
    """A private copy of the 1k preset in `folder` (made first if need be), for benchmarks to change."""
    source = presets.default_dir("1k")
    if not (source / "dataset_dict.json").exists():
        presets.make("1k", source)
    shutil.copytree(source, folder / "1k")
    return folder / "1k"


def append_rows(path: Path, fraction: float) -> int:
    """Rewrite the dataset at `path` with `fraction` more rows per split (copies of its first rows,
    slightly changed), the old rows first and byte-identical. Returns the rows added."""
    dd = datasets.load_from_disk(str(path))
    added, out = 0, {}
    for name, split in dd.items():
        n = round(len(split) * fraction)
        rows = split.select(range(n)).with_format("numpy")[:]
        extra = datasets.Dataset.from_dict({c: (v * 1.5 if c.startswith("layer_") else v) for c, v in rows.items()},
                                           features=split.features)
        out[name] = datasets.concatenate_datasets([split, extra])
        added += n
    staged = path.with_name(path.name + ".new")
    datasets.DatasetDict(out).save_to_disk(str(staged))
    del dd, out
    shutil.rmtree(path)
    staged.rename(path)
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        data, store = copy_of_1k(Path(tmp)), f"{tmp}/store"
        path = str(data)

        cold, report = median_of(REPEAT, lambda: featstore.build(
            path, FEATURIZERS, store=tempfile.mkdtemp(dir=tmp) + "/s", device="cpu"))
        shutil.copytree(report.store, store)
        noop, again = median_of(REPEAT, lambda: featstore.build(path, FEATURIZERS, store=store, device="cpu"))
        assert again.computed == 0
        status_s, status = median_of(REPEAT, lambda: featstore.status(path, store=store))
        assert status.fresh
        verify = featstore.verify(store)
        assert verify.ok
        one_cold, _ = median_of(REPEAT, lambda: featstore.build(
            path, FEATURIZERS, layers=[LAYER], store=tempfile.mkdtemp(dir=tmp) + "/s", device="cpu"))

        def change_one_layer():
            patch_one_value(data, LAYER)
            os.sync()  # the dataset's own writes are not the rebuild's
            return timed(lambda: featstore.build(path, FEATURIZERS, store=store, device="cpu"))

        runs = sorted(change_one_layer() for _ in range(REPEAT))
        changed, rebuilt = runs[len(runs) // 2]
        assert rebuilt.computed == 2 and rebuilt.reasons == {"input bytes changed": 2}, rebuilt.reasons

        added = append_rows(data, 0.10)
        os.sync()

        def append_build():  # each on a copy of the store as it was before the rows came
            copy = tempfile.mkdtemp(dir=tmp) + "/s"
            shutil.copytree(store, copy)
            os.sync()
            return featstore.build(path, FEATURIZERS, store=copy, device="cpu")

        appended, grown = median_of(REPEAT, append_build)
        assert grown.computed == 512 and all("rows appended" in r for r in grown.reasons), grown.reasons

    entries = report.computed
    lines = [
        (f"bench_incremental: 1k preset ({entries} entries: 128 layers x 2 splits x {', '.join(FEATURIZERS)}), "
        f"CPU build, {os.cpu_count()} cores, {platform.processor() or platform.machine()}"),
        "",
        f"{'case':44} {'seconds':>9} {'ratio':>22} {'bar':>16}",
        f"{'cold build':44} {cold:9.2f} {'1.00x':>22}",
        f"{'no-op rebuild (same process)':44} {noop:9.2f} {f'{noop / cold:.1%} of cold':>22} {'<= 1 s, <= 2%':>16}",
        (f"{'one layer changed in place, rebuilt':44} {changed:9.2f} "
        f"{f'{changed / (one_cold + noop):.2f}x (1 layer + no-op)':>22} {'<= 1.5x':>16}"),
        f"{'  (cold build of that layer alone)':44} {one_cold:9.2f}",
        (f"{f'10% rows appended ({added} rows), rebuilt':44} {appended:9.2f} {f'{appended / cold:.1%} of cold':>22} "
        f"{'<= 20%':>16}"),
        f"{'status (all fresh)':44} {status_s:9.2f} {f'{status_s / cold:.1%} of cold':>22}",
        (f"{'verify, every chunk of ' + str(verify.checked) + ' entries':44} {verify.seconds:9.2f} "
        f"{f'{verify.bytes_read / verify.seconds / 1e9:.2f} GB/s':>22}"),
        "",
        "reasons of the one-layer rebuild: " + ", ".join(f"{n} {r}" for r, n in rebuilt.reasons.items()),
        "reasons of the append rebuild: " + ", ".join(f"{n} {r}" for r, n in grown.reasons.items()),
        "",
        "phases (seconds, summed over threads):",
        *(f"  {name:22} " + "  ".join(f"{k} {v:.2f}" for k, v in r.seconds.items())
          for name, r in (("cold", report), ("no-op", again), ("one layer changed", rebuilt), ("rows appended", grown))),
    ]
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "incremental.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
