"""``python main.py autos-train DATASET [DATASET ...] --out PREDICTOR.pt``: fit the AutoSparse predictor.

Kept free of heavy imports so that building the command-line parser stays fast."""

from __future__ import annotations

import argparse
import json
import math


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 64,64, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected one or more positive sizes such as 64,64, got {text!r}")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's arguments."""
    parser.add_argument("datasets", nargs="+", help="autos_dataset.pt files written by irp runs")
    parser.add_argument("--out", required=True, help="predictor file to write (e.g. results/autosparse/predictor.pt)")
    parser.add_argument("--hidden", type=_hidden, default=[64, 64], help="hidden layer sizes (default 64,64)")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training rows (default 20)")
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per Adam step (default 1024)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, row order and tensor hold-out")
    parser.add_argument("--features", choices=("standardized", "raw"), default="standardized",
                        help="theta0 and g0 standardised per tensor (default) or raw, as in the paper")
    parser.add_argument("--target", choices=("fraction", "minmax"), default="fraction",
                        help="regression target: surviving score / iterations (default), or min-max scaled over "
                             "each dataset, as AutoSparse's code")
    parser.add_argument("--holdout", choices=("tensor", "dataset", "none"), default="tensor",
                        help="evaluate on whole held-out tensors (default), on the last dataset, or not at all")
    parser.add_argument("--holdout-fraction", type=float, default=0.2,
                        help="fraction of all tensors held out with --holdout tensor (default 0.2, at least one)")


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def run(args: argparse.Namespace) -> int:
    """Fit and save; prints the hold-out metrics and a one-line summary."""
    from autosparse.dataset import DatasetFormatError
    from autosparse.train import FitOptions, train_predictor

    options = FitOptions(hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, features=args.features, holdout=args.holdout,
                         holdout_fraction=args.holdout_fraction, target=args.target)
    try:
        result = train_predictor(args.datasets, args.out, options)
    except (DatasetFormatError, ValueError) as exc:
        print(f"autos-train: {exc}")
        return 2
    m = result.metrics
    print(f"train tensors: {', '.join(result.train_keys)}")
    if m["eval"]:
        print(f"held-out tensors: {', '.join(result.eval_keys)}")
        print(json.dumps({k: v for k, v in m["eval"].items() if k != "tensors"}, indent=1, default=str))
    print(f"autos-train: {m['train']['rows']:,} training rows, train mse {_fmt(m['train']['mse'])} spearman "
          f"{_fmt(m['train']['spearman'])}; held-out ({args.holdout}) mse {_fmt(m['eval'].get('mse'))} spearman "
          f"{_fmt(m['eval'].get('spearman'))}; {m['seconds']:.1f}s -> {args.out}")
    return 0
