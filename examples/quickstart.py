"""Load precomputed features from the store and fit a linear probe on a few layers.

    featstore build --dataset 1k          # once: computes stats + svd for all 128 layers
    python examples/quickstart.py --dataset 1k

Nothing is computed here but the probes: features come straight from the store as torch tensors.
On the synthetic presets, the category lives in the spectra of layers [n/4, n/2) only
(featstore.presets.signal_layers), so the probe should be accurate there and near chance (0.1) elsewhere.
"""

import argparse
import time

import torch

import featstore
from featstore.presets import signal_layers


def probe_accuracy(x_train, y_train, x_test, y_test, classes: int, steps: int = 300) -> float:
    """Multinomial logistic regression on standardised log-features, full-batch LBFGS."""
    x_train, x_test = torch.log(x_train + 1e-6), torch.log(x_test + 1e-6)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    model = torch.nn.Linear(x_train.shape[1], classes)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x_train), y_train) + 1e-3 * model.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (model(x_test).argmax(1) == y_test).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="1k")
    parser.add_argument("--store", default=None, help="store location (default: FEATSTORE_STORE or ~/.cache)")
    parser.add_argument("--featurizer", default="svd")
    args = parser.parse_args()
    torch.manual_seed(0)  # the probes' initial weights: the same accuracies every run

    fs = featstore.open(args.dataset, store=args.store)
    print(fs)
    y_train, y_test = fs.labels("train"), fs.labels("test")
    classes = len(fs.label_names or []) or int(y_train.max()) + 1
    signal = set(signal_layers(len(fs.layers)))
    chosen = sorted({0, min(signal), max(signal), len(fs.layers) - 1})
    for i in chosen:
        layer = fs.layers[i]
        start = time.perf_counter()
        x_train, x_test = fs.load(layer, args.featurizer, "train"), fs.load(layer, args.featurizer, "test")
        loaded = time.perf_counter() - start
        accuracy = probe_accuracy(x_train, y_train, x_test, y_test, classes)
        kind = "(signal):" if i in signal else "(no signal):"
        print(f"{layer} {kind:12} probe accuracy {accuracy:.2f}  (features {tuple(x_train.shape)} "
              f"loaded in {loaded * 1e3:.1f} ms)")


if __name__ == "__main__":
    try:
        main()
    except featstore.FeatstoreError as e:  # what to do is in the message: no traceback
        raise SystemExit(f"error: {e}") from None
