"""Featurizers on the 1k preset: speed against plain torch, accuracy against float64 NumPy, and the
cold `svd` build against its stages measured alone.

    python benchmarks/bench_featurizers.py [--device cpu|cuda] [--layers 16] [--skip-build]

Speed: median time per layer (train split, 800 x 64 x 64) of each built-in vs the same quantity
written the obvious way in torch. Accuracy: the largest error of a row's features relative to that
row's largest reference value, max |f - ref| / max |ref| per row, over the rows of layers 0, 16, ..., 112,
reference in float64 NumPy, for each stored dtype (a layer-wide max |ref| would hide the errors of
small-scale rows: it showed the float32 GPU kernel at 4e-8 while it erred by 4.5e-6 per matrix).
Build: a cold `featstore.build` of all 128 layers with `svd` vs read + batched singular values +
write, each timed alone in this run. Prints the tables and writes them to --out/featurizers-<device>.txt.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import featstore
from featstore import presets
from featstore.device import from_stored, host_tensor, resolve, to_stored
from featstore.featurizers import parse_spec
from featstore.featurizers.basic import projection_matrix
from featstore.sources import load_source
from featstore.store import Store


def baseline(name: str):
    """The obvious plain-torch version of each built-in (float32 throughout)."""
    def stats(x):
        f = x.reshape(len(x), -1)
        return torch.stack([f.mean(1), f.std(1, correction=0), f.norm(dim=1), f.abs().amax(1)], 1)

    def spectral(x):
        s = torch.linalg.svdvals(x)
        p = s / s.sum(1, keepdim=True)
        h = -(p * torch.log(p)).sum(1)
        return torch.stack([h.exp(), (s**2).sum(1) / s[:, 0] ** 2, h, s.sum(1) / (s**2).sum(1).sqrt()], 1)

    def norms(x):
        r, c = x.norm(dim=2), x.norm(dim=1)
        return torch.stack([f(v) for v in (r, c) for f in (lambda v: v.mean(1), lambda v: v.std(1, correction=0),
                                                            lambda v: v.amin(1), lambda v: v.amax(1))], 1)

    return {
        "raw": lambda x: x.clone(),
        "stats": stats,
        "svd": lambda x: torch.linalg.svdvals(x)[:, :16],
        "spectral": spectral,
        "randproj": lambda x: x.reshape(len(x), -1) @ projection_matrix(x[0].numel(), 256, 0).to(x.device),
        "norms": norms,
    }[name]


def reference(name: str, x: np.ndarray) -> np.ndarray:
    a = x.astype(np.float64)
    flat = a.reshape(len(a), -1)
    if name == "raw":
        return a
    if name == "stats":
        return np.stack([flat.mean(1), flat.std(1), np.linalg.norm(flat, axis=1), np.abs(flat).max(1)], 1)
    if name == "norms":
        r, c = np.linalg.norm(a, axis=2), np.linalg.norm(a, axis=1)
        return np.stack([f(v) for v in (r, c) for f in (lambda v: v.mean(1), lambda v: v.std(1),
                                                         lambda v: v.min(1), lambda v: v.max(1))], 1)
    if name == "randproj":
        return flat @ projection_matrix(flat.shape[1], 256, 0).double().numpy()
    s = np.linalg.svd(a, compute_uv=False)
    if name == "svd":
        return s[:, :16]
    p = s / s.sum(1, keepdims=True)
    h = -(p * np.log(np.maximum(p, 1e-300))).sum(1)
    return np.stack([np.exp(h), (s**2).sum(1) / s[:, 0] ** 2, h, s.sum(1) / np.sqrt((s**2).sum(1))], 1)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--layers", type=int, default=16, help="layers timed per featurizer (of 128)")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = resolve(args.device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{torch.get_num_threads()} CPU threads"
    split = load_source("1k").splits["train"]
    step = max(1, 128 // args.layers)
    columns = [split.read(presets.layer_name(i)) for i in range(0, 128, step)]
    tensors = [host_tensor(c, device).to(device) for c in columns]
    title = (f"bench_featurizers on {device} ({name}), torch {torch.__version__}, 1k preset train split "
             f"(800 x 64 x 64), {len(columns)} layers")
    lines = [title,
             "", f"{'featurizer':10} {'featstore ms/layer':>19} {'plain torch ms/layer':>21} {'ratio':>6}"]
    print("\n".join(lines), flush=True)
    names = ["raw", "stats", "svd", "spectral", "randproj", "norms"]
    for feat in names:
        bound, plain = parse_spec(feat), baseline(feat)
        bound(tensors[0]), plain(tensors[0])  # warm-up: graphs, kernels, handles
        ours = statistics.median(timed(lambda t=t, f=bound: f(t), device) for t in tensors)
        theirs = statistics.median(timed(lambda t=t, f=plain: f(t), device) for t in tensors)
        lines.append(f"{feat:10} {ours * 1e3:19.2f} {theirs * 1e3:21.2f} {theirs / ours:5.2f}x")
        print(lines[-1], flush=True)

    # the same 8 layers for every --layers and device: 0, 16, ..., 112 (signal layers 32 and 48 among them)
    checked = [split.read(presets.layer_name(i)) for i in range(0, 128, 16)]
    lines += ["", ("accuracy: max over rows of max |feature - float64 NumPy| / max |reference| of the row, "
                   "layers 0, 16, ..., 112"),
              f"{'featurizer':10} " + " ".join(f"{d:>10}" for d in ("float32", "float16", "bfloat16"))]
    for feat in names:
        errors = []
        for dtype in ("float32", "float16", "bfloat16"):
            bound = parse_spec(feat, dtype)
            worst = 0.0
            for c in checked:
                ref = reference(feat, c)
                got = from_stored(to_stored(bound(host_tensor(c, device).to(device)), dtype), dtype).double().numpy()
                got, ref = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
                worst = max(worst, float((np.abs(got - ref).max(1) / np.abs(ref).max(1).clip(1e-300)).max()))
            errors.append(worst)
        if feat == names[0]:
            print("\n".join(lines[-3:]), flush=True)
        lines.append(f"{feat:10} " + " ".join(f"{e:10.1e}" for e in errors))
        print(lines[-1], flush=True)

    if not args.skip_build:
        lines += ["", "cold build of 1k, svd, all 128 layers x 2 splits, vs its stages measured alone"]
        with tempfile.TemporaryDirectory() as tmp:
            report = featstore.build("1k", ["svd"], store=f"{tmp}/store", device=device)
            store = Store.open(f"{tmp}/stage", create=True)
            source = load_source("1k")
            svd = parse_spec("svd")
            read = compute = write = 0.0
            for layer in source.layers:
                for s in source.splits.values():
                    start = time.perf_counter()
                    x = host_tensor(s.read(layer), device).to(device)
                    read += timed(lambda: None, device) + time.perf_counter() - start
                    start = time.perf_counter()
                    out = to_stored(svd(x), "float32")
                    compute += time.perf_counter() - start
                    key = f"{abs(hash((layer, id(s)))):032x}"
                    info = featstore.commit.entry_info(key, "stage", svd.identity, out, "", device)
                    write += timed(lambda o=out, i=info: store.write_entry(i, o), "cpu")
            stages = read + compute + write
            lines += [f"  featstore.build                {report.seconds['total']:8.2f} s",
                      f"  read {read:.2f} + svd {compute:.2f} + write {write:.2f} = {stages:8.2f} s",
                      f"  build / sum of stages          {report.seconds['total'] / stages:8.2f}x",
                      f"  build / slowest stage          {report.seconds['total'] / max(read, compute, write):8.2f}x"]
            print("\n".join(lines[-4:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"featurizers-{device.split(':')[0]}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
