"""Your own featurizer in a few lines: defined here, built into the store, loaded back, reused.

    python examples/custom_featurizer.py --dataset sanity
    python examples/custom_featurizer.py --dataset sanity      # again: nothing is computed

The same featurizer from the command line (run where this file is, so that it imports):

    cd examples && featstore build --dataset sanity --featurizer custom_featurizer:row_norm_profile:k=8

Its identity is a hash of its code and of the helper it calls: edit `_row_norms` (not a comment
in it) and the next build recomputes these entries, and only these; `featstore status` says why.
"""

import argparse

import torch

import featstore
from featstore.presets import signal_layers


def _row_norms(x):
    """Euclidean norm of each row of each matrix: (n, rows)."""
    return x.norm(dim=2)


@featstore.featurizer("row_norm_profile")
def row_norm_profile(x, k: int = 4, relative: bool = True):
    """The k largest row norms of each matrix, descending; divided by its Frobenius norm when
    `relative` (scale-free). Output (n, k)."""
    top = _row_norms(x).topk(k, dim=1).values
    return top / x.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-12) if relative else top


def separation(features, labels) -> float:
    """Between-class over within-class variance of the features, summed over dimensions: large
    where the label shapes the features."""
    mean = features.mean(0)
    classes = [features[labels == c] for c in labels.unique()]
    between = sum(len(f) * (f.mean(0) - mean).square().sum() for f in classes)
    within = sum((f - f.mean(0)).square().sum() for f in classes)
    return float(between / within.clamp_min(1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="sanity")
    parser.add_argument("--store", default=None, help="store location [default: FEATSTORE_STORE or the user's]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()

    spec = f"row_norm_profile:k={args.k}"
    report = featstore.build(args.dataset, [spec], store=args.store, device=args.device)
    print(f"{spec}: {report.computed} computed, {report.reused} reused "
          f"(version {featstore.featurizers.get('row_norm_profile').version})")

    with featstore.open(args.dataset, store=args.store) as fs:
        labels = fs.labels("train")
        signal = {fs.layers[i] for i in signal_layers(len(fs.layers))}
        for layer in fs.layers:
            x = fs.load(layer, spec, split="train")
            mark = "  <- a signal layer of the preset" if layer in signal else ""
            print(f"{layer}  {tuple(x.shape)}  class separation {separation(x, labels):8.3f}{mark}")


if __name__ == "__main__":
    torch.set_printoptions(precision=3)
    main()
