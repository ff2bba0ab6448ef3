"""Which codec and chunk size should entries use? Measured on real features of the 1k preset.

    python benchmarks/bench_codec.py [--dataset 1k] [--layers 8]

For `raw` (800 x 64 x 64 float32, 13 MB per layer) and `svd` (800 x 16) features of a few layers:
write time, read time (page cache warm) and size on disk for each codec x chunk size, as medians.
The store uses what wins here (store.CHUNK_BYTES, no compressor); results/codec.txt has the table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from featstore import read_column
from featstore.featurizers import parse_spec
from featstore.sources import load_source
from featstore.store import chunk_rows

CODECS = {
    "none": None,
    "zstd-1": [ZstdCodec(level=1)],
    "zstd-3": [ZstdCodec(level=3)],
    "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
}
CHUNK_MB = [1, 4, 8, 32]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(values: np.ndarray, codec, chunk_rows: int, work: Path) -> tuple[float, float, int]:
    writes, reads, size = [], [], 0
    for i in range(3):
        target = work / f"a{i}"
        start = time.perf_counter()
        array = zarr.create_array(zarr.storage.LocalStore(target), shape=values.shape, dtype=values.dtype,
                                  chunks=(chunk_rows, *values.shape[1:]), compressors=codec, fill_value=0)
        array[...] = values
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        back = zarr.open_array(zarr.storage.LocalStore(target, read_only=True), mode="r")[...]
        reads.append(time.perf_counter() - start)
        assert np.array_equal(back, values)
        size = du(target)
        shutil.rmtree(target)
    return statistics.median(writes), statistics.median(reads), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="1k")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    split = load_source(args.dataset).splits["train"]
    columns = [read_column(split._data, f"layer_{i:03d}") for i in range(0, 128, 128 // args.layers)]
    features = {
        "raw": columns,
        "svd": [parse_spec("svd")(torch.from_numpy(c.copy())).numpy() for c in columns],
    }
    lines = [f"codec x chunk size on {args.dataset} ({args.layers} layers, train split); medians of 3 per layer, summed",
             f"{'features':9} {'codec':18} {'chunk':>6} {'write ms':>9} {'read ms':>8} {'size MB':>8} {'ratio':>6}"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind, arrays in features.items():
            raw_bytes = sum(a.nbytes for a in arrays)
            for name, codec in CODECS.items():
                for mb in CHUNK_MB if kind == "raw" else [8]:
                    rows = chunk_rows(len(arrays[0]), arrays[0][:1].nbytes, mb << 20)
                    totals = np.sum([measure(a, codec, rows, work) for a in arrays], axis=0)
                    lines.append(f"{kind:9} {name:18} {str(mb) + 'MB':>6} {totals[0] * 1e3:9.1f} {totals[1] * 1e3:8.1f} "
                                 f"{totals[2] / 1e6:8.2f} {raw_bytes / totals[2]:6.3f}")
                    print(lines[-1], flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "codec.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
