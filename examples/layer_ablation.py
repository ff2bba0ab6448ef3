"""Which layers carry the category? A linear probe per layer, repeated, for each feature config.

    python examples/layer_ablation.py --dataset 1k --num-runs 8 --configs svd stats --output-dir out/1k
    python examples/layer_ablation.py --dataset ./adapters --layers '*lora_A*' --test-fraction 0.2

The experiment this project was made for: per-layer probes over `--num-runs` repetitions x
`--configs` (each config is a featurizer spec). Features come from the store: the first run builds
what is missing, every later run computes nothing (the log says so) and only trains. For each
config, the probes of all layers train at once (one batched linear model, full-batch Adam) on a
random 90% of the train split per repetition, and are scored on the test split. A dataset of
one split (no `test`) is split here instead: `--test-fraction` of its rows, the same ones in every
run, are held out for scoring. `--layers` (globs) picks the layer columns, as for `featstore build`.

Writes to --output-dir: results.json (accuracies per config, layer and run; mean and std; the
run's timeline), results.md (a table of mean +- std per layer) and accuracy.png (accuracy by
layer, one line per config). On the synthetic presets the category lives in layers [n/4, n/2):
the log says whether the probes found them.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import time
from pathlib import Path

import torch

import featstore
from featstore import presets

log = logging.getLogger("layer_ablation")


def prepare(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers, rows, features) float32: the log of features that are positive on train (spectra
    and norms span decades), then standardised on train."""
    x_train, x_test = (x.reshape(*x.shape[:2], -1).float() for x in (x_train, x_test))
    positive = (x_train > 0).all(1, keepdim=True)
    x_train, x_test = (torch.where(positive, torch.log(x.clamp_min(1e-12)), x) for x in (x_train, x_test))
    mean, std = x_train.mean(1, keepdim=True), x_train.std(1, keepdim=True) + 1e-6
    return (x_train - mean) / std, (x_test - mean) / std


def train_probes(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int, steps: int = 300) -> tuple:
    """One multinomial logistic regression per layer, all layers at once: x (layers, rows, features)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(x.shape[1], generator=g)[: max(1, int(0.9 * x.shape[1]))].to(x.device)
    x, y = x[:, rows], y[rows]
    w = (torch.randn(x.shape[0], x.shape[2], classes, generator=g) * 0.01).to(x.device).requires_grad_()
    b = torch.zeros(x.shape[0], 1, classes, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    target = y.expand(x.shape[0], -1).reshape(-1)
    for _ in range(steps):
        opt.zero_grad()
        logits = torch.baddbmm(b, x, w)
        # the sum over layers of each layer's mean loss + L2: independent problems, one optimiser
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, classes), target, reduction="sum") / x.shape[1]
        loss = ce + 1e-3 * w.square().sum()
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    return (torch.baddbmm(b, x, w).argmax(2) == y).float().mean(1).tolist()


def split_names(splits: list[str]) -> tuple[str, str | None]:
    """(the split to train on, the one to score on, or None to hold rows of the first out)."""
    if "test" in splits:
        return ("train" if "train" in splits else next(s for s in splits if s != "test")), "test"
    if len(splits) != 1:
        raise SystemExit(f"the dataset has splits {', '.join(splits)} and none named test: which one scores the probes?")
    return splits[0], None


def write_outputs(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    configs, layers = results["configs"], results["layers"]
    lines = [f"# Layer ablation: {results['dataset']}, {results['num_runs']} runs", "",
             "| layer | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    for layer in layers:
        cells = [f"{results['summary'][c][layer]['mean']:.3f} ± {results['summary'][c][layer]['std']:.3f}"
                 for c in configs]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    for c in configs:
        mean = [results["summary"][c][layer]["mean"] for layer in layers]
        std = [results["summary"][c][layer]["std"] for layer in layers]
        ax.plot(range(len(layers)), mean, label=c)
        ax.fill_between(range(len(layers)), [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        alpha=0.2)
    ax.set(xlabel="layer", ylabel="test accuracy", title=f"probe accuracy by layer: {results['dataset']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="1k", help="anything `featstore build --dataset` takes")
    parser.add_argument("--num-runs", type=int, default=8, help="repetitions per layer and config")
    parser.add_argument("--configs", nargs="+", default=["svd", "stats"], help="featurizer specs, one per config")
    parser.add_argument("--layers", nargs="+", default=[], help="layer column globs (default: every layer column)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="rows held out for scoring when the dataset has no test split")
    parser.add_argument("--output-dir", type=Path, default=Path("layer_ablation_out"))
    parser.add_argument("--store", default=None, help="store location (default: FEATSTORE_STORE or ~/.cache)")
    parser.add_argument("--device", default="auto", help="for features and probes: auto, cpu, cuda")
    args = parser.parse_args()
    try:  # now, not after the training: a run's results must have somewhere to go
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"--output-dir {args.output_dir}: {e.strerror} (name a directory, new or existing)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # CUDA's start-up (~0.5 s) belongs to no step below
    # What the imports made (torch's ~1M objects) is never garbage; left to the collector, its first
    # full pass over them costs ~0.1 s inside whichever step comes next (here: featstore's).
    gc.freeze()
    started = time.perf_counter()

    report = featstore.build(args.dataset, args.configs, layers=args.layers, store=args.store, device=device)
    built = time.perf_counter() - started
    reasons = ", ".join(f"{n} {r}" for r, n in report.reasons.items())
    log.info("features: %d computed%s, %d reused in %.2f s", report.computed, f" ({reasons})" if reasons else "",
             report.reused, built)

    start = time.perf_counter()
    fs = featstore.open(args.dataset, store=args.store)
    chosen = set(fs.layer_names(args.layers or fs.layers))  # the globs' layers (as the build chose them)
    layers = [layer for layer in fs.layers if layer in chosen]  # in depth order
    specs = {c: fs.row(layers[0], c).featurizer for c in args.configs}
    train, test = split_names(fs.splits)
    y_train, y_test = fs.labels(train, device=device), fs.labels(test, device=device) if test else None
    features = {c: (fs.load_many(layers, c, train, stack=True, device=device),
                    fs.load_many(layers, c, test, stack=True, device=device) if test else None) for c in args.configs}
    fs.close()
    if test is None:  # hold out the same rows in every run and config
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))
        n_test = max(1, int(args.test_fraction * len(y_train)))
        held_out, kept = order[:n_test], order[n_test:]
        y_train, y_test = y_train[kept.to(y_train.device)], y_train[held_out.to(y_train.device)]
        features = {c: (x[:, kept.to(x.device)], x[:, held_out.to(x.device)]) for c, (x, _) in features.items()}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    loaded = time.perf_counter() - start
    log.info("loaded %d layers x %d configs from the store in %.3f s", len(layers), len(args.configs), loaded)

    start = time.perf_counter()
    data = {c: prepare(*pair) for c, pair in features.items()}
    classes = int(max(y_train.max(), y_test.max())) + 1
    runs = {c: [] for c in args.configs}
    for c, (x_train, x_test) in data.items():
        for run in range(args.num_runs):
            w, b = train_probes(x_train, y_train, classes, seed=run)
            runs[c].append(accuracy(w, b, x_test, y_test))
    trained = time.perf_counter() - start
    total = time.perf_counter() - started

    accuracy_by = {c: {layer: [r[i] for r in runs[c]] for i, layer in enumerate(layers)} for c in args.configs}
    summary = {c: {layer: {"mean": sum(v) / len(v), "std": float(torch.tensor(v).std(correction=0))}
                   for layer, v in accuracy_by[c].items()} for c in args.configs}
    s = report.seconds
    results = {
        "dataset": args.dataset, "configs": [specs[c] for c in args.configs], "num_runs": args.num_runs,
        "layers": layers, "device": device, "classes": classes,
        "rows": {"train": len(y_train), "test": len(y_test), "test_split": test or f"{args.test_fraction:g} of {train}"},
        "features": {"computed": report.computed, "reused": report.reused, "reasons": dict(report.reasons)},
        "accuracy": {specs[c]: v for c, v in accuracy_by.items()},
        "summary": {specs[c]: v for c, v in summary.items()},
        "timeline": {"featstore_build": round(built, 4), "build_hash_and_read": round(s["hash"] + s["read"], 4),
                     "build_compute": round(s["compute"], 4), "load_from_store": round(loaded, 4),
                     "training": round(trained, 4), "total": round(total, 4),
                     "featstore_share": round((built + loaded) / total, 5)},
    }
    write_outputs(args.output_dir, results)

    first = specs[args.configs[0]]
    ranked = sorted(layers, key=lambda layer: -summary[args.configs[0]][layer]["mean"])
    log.info("training: %d probes in %.2f s; total %.2f s, featstore %.1f%% of it", len(layers) * args.num_runs
             * len(args.configs), trained, total, 100 * results["timeline"]["featstore_share"])
    preset = presets.get(str(args.dataset))
    if preset is not None:
        signal = [layers[i] for i in presets.signal_layers(len(layers))]
        found = sorted(ranked[: len(signal)]) == sorted(signal)
        log.info("%s: best %d layers %s; the preset planted the signal in %s..%s: %s", first, len(signal),
                 ", ".join(sorted(ranked[: len(signal)])[:6]) + (" ..." if len(signal) > 6 else ""),
                 signal[0], signal[-1], "found" if found else "NOT found")
    log.info("wrote %s/results.json, results.md, accuracy.png", args.output_dir)


if __name__ == "__main__":
    try:
        main()
    except featstore.FeatstoreError as e:  # what to do is in the message: no traceback
        raise SystemExit(f"error: {e}") from None
