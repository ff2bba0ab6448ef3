"""Cold build of a preset on 1 GPU vs N GPUs of one host (one Dask worker per GPU), side by side.

    python benchmarks/bench_multigpu.py [--preset 10k] [--gpus 1 2] [--cpu] [--repeat 1]

Featurizers: svd, spectral, randproj. "1 GPU" is the ordinary single-process build on cuda:0,
"1 GPU, Dask worker" the same through `--devices cuda:0` (the multi-GPU path with one worker: its
overhead); "N GPUs" is `featstore build --devices cuda:0,...` (a LocalCluster of one worker per GPU). Each
run builds into a fresh store; the entries of every run must equal the first's (same keys, same
bytes: checked). `--cpu` adds the CPU build on the same machine. Writes multigpu-<gpu>.txt.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import featstore
from featstore import presets

FEATURIZERS = ["svd", "spectral", "randproj"]


def contents(store: str, dataset: str) -> dict:
    with featstore.open(dataset, store=store) as fs:
        return {r.slot: fs.load(r.layer, r.featurizer, r.split).numpy().tobytes() for r in fs.catalog.rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="10k")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpu", action="store_true", help="also the CPU build on this machine")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    available = torch.cuda.device_count()
    gpu = torch.cuda.get_device_name(0) if available else "no GPU"
    if not (presets.default_dir(args.preset) / "dataset_dict.json").exists():
        presets.make(args.preset, presets.default_dir(args.preset))
    runs = [("cpu", {"device": "cpu"}, None)] if args.cpu else []
    for n in (n for n in args.gpus if n <= available):
        if n == 1:
            runs.append(("1 GPU", {"device": "cuda:0"}, 1))
            runs.append(("1 GPU, Dask worker", {"devices": ["cuda:0"]}, 1))  # the multi-GPU path's overhead
        else:
            runs.append((f"{n} GPUs", {"devices": [f"cuda:{i}" for i in range(n)]}, n))
    skipped = [n for n in args.gpus if n > available]
    lines = [(f"bench_multigpu: {args.preset} preset, {' + '.join(FEATURIZERS)}, cold builds; {available} x {gpu}, "
             f"{platform.machine()}, torch {torch.__version__}"),
             f"{'run':10} {'median s':>9} {'runs s':>20} {'entries':>8} {'vs 1 GPU':>9}"]
    print("\n".join(lines), flush=True)
    reference, one_gpu = None, None
    for name, kwargs, gpus in runs:
        times = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                store = f"{tmp}/store"
                start = time.perf_counter()
                report = featstore.build(args.preset, FEATURIZERS, store=store, **kwargs)
                times.append(time.perf_counter() - start)
                if gpus is not None:  # GPU runs must agree bit for bit (the CPU's svd may differ in the last bits)
                    got = contents(store, args.preset)
                    reference = reference or got
                    assert got == reference, f"{name}: entries differ from the first GPU run"
        median = statistics.median(times)
        one_gpu = median if name == "1 GPU" else one_gpu
        ratio = f"{one_gpu / median:8.2f}x" if one_gpu and gpus else f"{'-':>9}"
        lines.append(f"{name:10} {median:9.2f} {' '.join(f'{t:.2f}' for t in times):>20} {report.computed:>8} {ratio}")
        print(lines[-1], flush=True)
    if skipped:
        lines.append(f"not run: {', '.join(map(str, skipped))} GPUs (this machine has {available})")
    lines.append("bar: 2 GPUs >= 1.8x one GPU")
    print("\n".join(lines[-2 if skipped else -1:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = gpu.split()[1].lower() if available else "cpu"  # "NVIDIA H100 80GB HBM3" -> h100
    (out / f"multigpu-{tag}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
