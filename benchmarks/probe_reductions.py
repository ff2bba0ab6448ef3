"""Ways to write `stats` and `norms` (float64 per-row reductions), timed and checked against float64 NumPy.

    python benchmarks/probe_reductions.py [--device cpu|cuda] [--out benchmarks/results]

On a GPU a column's reductions take microseconds each, so a featurizer's time is the count of
kernels it launches; on the CPU, passes over the float64 copy (in_blocks' 4 MB blocks) and how fast
each reduction's loop is. Each variant on an 800 x 64 x 64 column (1k's train split) and a
1000 x 16 x 4096 one (LoRA factors), rows of scales 1e-3 to 10 around 0.3; error as in
bench_featurizers.py: max over rows of max |f - ref| / max |ref|. Medians of 30 calls (5 on the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from featstore.device import in_blocks, resolve
from featstore.featurizers.basic import FLOAT64_BLOCK_BYTES


def stats_two_pass(x):  # e42d691's on every device (the CPU's still): mean, then the centred values' norm
    flat = x.reshape(len(x), -1).to(torch.float64)
    mean = flat.mean(1, keepdim=True)
    std = torch.linalg.vector_norm(flat - mean, dim=1) / flat.shape[1] ** 0.5
    return torch.stack([mean[:, 0], std, torch.linalg.vector_norm(flat, dim=1), flat.abs().amax(1)], 1).to(torch.float32)


def stats_two_pass_inf(x):  # the same, max |x| as one inf-norm
    flat = x.reshape(len(x), -1).to(torch.float64)
    mean = flat.mean(1, keepdim=True)
    std = torch.linalg.vector_norm(flat - mean, dim=1) / flat.shape[1] ** 0.5
    return torch.stack([mean[:, 0], std, torch.linalg.vector_norm(flat, dim=1),
                        torch.linalg.vector_norm(flat, float("inf"), dim=1)], 1).to(torch.float32)


def stats_welford(x):  # std_mean: one kernel for both
    flat = x.reshape(len(x), -1).to(torch.float64)
    std, mean = torch.std_mean(flat, 1, correction=0)
    return torch.stack([mean, std, torch.linalg.vector_norm(flat, dim=1),
                        torch.linalg.vector_norm(flat, float("inf"), dim=1)], 1).to(torch.float32)


def stats_plain(x):  # bench_featurizers' baseline: float32 throughout
    f = x.reshape(len(x), -1)
    return torch.stack([f.mean(1), f.std(1, correction=0), f.norm(dim=1), f.abs().amax(1)], 1)


def _summaries(vectors, summary):
    return torch.stack([s for v in vectors for s in summary(v)], 1).to(torch.float32)


def norms_separate(x):  # featstore e42d691's: four reductions of each norm vector
    squares = x.to(torch.float64).square()
    return _summaries((squares.sum(2).sqrt(), squares.sum(1).sqrt()),
                      lambda v: (v.mean(1), v.std(1, correction=0), v.amin(1), v.amax(1)))


def norms_paired(x):  # std_mean and aminmax: two reductions of each
    squares = x.to(torch.float64).square()
    return _summaries((squares.sum(2).sqrt(), squares.sum(1).sqrt()),
                      lambda v: (*torch.std_mean(v, 1, correction=0)[::-1], *torch.aminmax(v, dim=1)))


def norms_vector_norm(x):  # the norms by vector_norm(dtype=float64), paired summaries
    return _summaries((torch.linalg.vector_norm(x, dim=2, dtype=torch.float64),
                       torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)),
                      lambda v: (*torch.std_mean(v, 1, correction=0)[::-1], *torch.aminmax(v, dim=1)))


def norms_squares32(x):  # squares in x's dtype (each rounded once: 6e-8 relative), summed in float64
    squares = x.square()
    return _summaries((squares.sum(2, dtype=torch.float64).sqrt(), squares.sum(1, dtype=torch.float64).sqrt()),
                      lambda v: (v.mean(1), v.std(1, correction=0), v.amin(1), v.amax(1)))


def stats_welford_or_two_pass(x):  # on a GPU std_mean and the inf-norm, on the CPU two passes
    return (stats_two_pass if x.device.type == "cpu" else stats_welford)(x)


def norms_plain(x):
    return _summaries((x.norm(dim=2), x.norm(dim=1)), lambda v: (v.mean(1), v.std(1, correction=0), v.amin(1), v.amax(1)))


def reference(name, a):
    if name == "stats":
        f = a.reshape(len(a), -1)
        return np.stack([f.mean(1), f.std(1), np.linalg.norm(f, axis=1), np.abs(f).max(1)], 1)
    r, c = np.linalg.norm(a, axis=2), np.linalg.norm(a, axis=1)
    return np.stack([s for v in (r, c) for s in (v.mean(1), v.std(1), v.min(1), v.max(1))], 1)


def timed(fn, x, device):
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(x)
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = resolve(args.device)
    name = torch.cuda.get_device_name(device) if device != "cpu" else f"{torch.get_num_threads()} CPU threads"
    lines = [f"probe_reductions on {device} ({name}), torch {torch.__version__}", "",
             f"{'column':18} {'variant':25} {'ms':>9} {'error':>8}"]
    print("\n".join(lines), flush=True)
    variants = {"stats": (stats_two_pass, stats_two_pass_inf, stats_welford, stats_welford_or_two_pass, stats_plain),
                "norms": (norms_separate, norms_paired, norms_vector_norm, norms_squares32, norms_plain)}
    for shape in ((800, 64, 64), (1000, 16, 4096)):
        scales = np.logspace(-3, 1, shape[0])[:, None, None]
        a = (np.random.default_rng(0).standard_normal(shape) * scales + 0.3).astype(np.float32)
        x = torch.from_numpy(a).to(device)
        for feat, fns in variants.items():
            ref = reference(feat, a.astype(np.float64))
            for fn in fns:
                run = fn if fn.__name__.endswith("plain") else (lambda x, f=fn: in_blocks(f, x, FLOAT64_BLOCK_BYTES))
                got = run(x).double().cpu().numpy()  # also the warm-up
                seconds = statistics.median(timed(run, x, device) for _ in range(5 if device == "cpu" else 30))
                error = (np.abs(got - ref).max(1) / np.abs(ref).max(1)).max()
                lines.append(f"{shape!s:18} {fn.__name__:25} {seconds * 1e3:9.3f} {error:8.1e}")
                print(lines[-1], flush=True)
    out = Path(args.out) / f"reductions-{device.split(':')[0]}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
