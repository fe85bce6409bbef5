"""Fitting the AutoSparse predictor on one or more ``autos_dataset.pt`` files.

AutoSparse (arXiv 2408.14757) regresses the IRP surviving score of every weight, scaled to [0, 1]
(``score / N``), on its initial features with an MLP and the mean squared error; Adam minimises it.
Evaluation always uses *whole* held-out units, never a random subset of rows (rows of one tensor are
strongly correlated, so a row split would overstate transfer):

* ``holdout="tensor"``: a seeded ``holdout_fraction`` of all (dataset, tensor) pairs (at least one,
  and at least one left for training);
* ``holdout="dataset"``: the last dataset given (needs two or more);
* ``holdout="none"``: train on everything, report training metrics only.

Reported: the MSE of the scaled targets and the Spearman rank correlation of predicted vs true
surviving scores on the held-out rows (pooled, and the mean over held-out tensors).  The fit is
reproducible: the initialisation and the mini-batch order come from ``seed`` only.

Targets: ``target="fraction"`` (default) ``score / N``; ``target="minmax"`` ``(score - min) / (max - min)``
over all weights of one dataset, as AutoSparse's code does (``runner_autostrain.py``; its 1e-7 guard aside).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from autosparse.dataset import load_dataset
from autosparse.features import FEATURE_MODES, tensor_features
from autosparse.predictor import build_mlp, make_settings, predict_rows, save_predictor

HOLDOUTS = ("tensor", "dataset", "none")
TARGETS = ("fraction", "minmax")


@dataclass
class FitOptions:
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0
    features: str = "standardized"
    holdout: str = "tensor"
    holdout_fraction: float = 0.2
    target: str = "fraction"

    def check(self) -> None:
        problems = []
        if self.target not in TARGETS:
            problems.append(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.features not in FEATURE_MODES:
            problems.append(f"features must be one of {FEATURE_MODES}, got {self.features!r}")
        if self.holdout not in HOLDOUTS:
            problems.append(f"holdout must be one of {HOLDOUTS}, got {self.holdout!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            problems.append("epochs and batch_size must be >= 1 and lr > 0")
        if any(h < 1 for h in self.hidden):
            problems.append(f"hidden sizes must be >= 1, got {self.hidden}")
        if not 0 < self.holdout_fraction < 1:
            problems.append(f"holdout_fraction must lie in (0, 1), got {self.holdout_fraction}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class TensorRows:
    """The rows of one prunable tensor of one dataset: features ``x`` (n, 2), targets ``y`` in [0, 1]."""

    dataset: int
    name: str
    x: torch.Tensor
    y: torch.Tensor
    score: torch.Tensor  # the integer surviving scores (for the rank correlation)

    @property
    def key(self) -> str:
        return f"{self.dataset}:{self.name}"


@dataclass
class FitResult:
    net: nn.Sequential
    settings: dict[str, Any]
    metrics: dict[str, Any]
    train_keys: list[str]
    eval_keys: list[str]


def target_scale(ds: dict[str, Any], target: str) -> tuple[float, float]:
    """``(low, span)`` with ``y = (score - low) / span``: ``fraction`` (default) ``(0, N)``, the surviving score
    over the iterations; ``minmax`` the global min-max over every weight of the dataset, as AutoSparse's code
    scales its targets (a constant score gets span 1, i.e. target 0)."""
    if target == "fraction":
        return 0.0, float(ds["iterations"])
    if target != "minmax":
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    scores = [t["score"] for t in ds["tensors"] if t["score"].numel()]
    low = min(int(s.min()) for s in scores)
    high = max(int(s.max()) for s in scores)
    return float(low), float(high - low) or 1.0


def collect_rows(datasets: Sequence[dict[str, Any]], features: str, target: str = "fraction") -> list[TensorRows]:
    """One :class:`TensorRows` per tensor of every dataset (targets: :func:`target_scale`)."""
    out = []
    for d, ds in enumerate(datasets):
        low, span = target_scale(ds, target)
        for t in ds["tensors"]:
            out.append(TensorRows(d, t["name"], tensor_features(t["theta0"], t["grad0"], features),
                                  (t["score"].reshape(-1).float() - low) / span, t["score"].reshape(-1).long()))
    return out


def split_holdout(rows: Sequence[TensorRows], holdout: str, seed: int,
                  fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """Indices (into ``rows``) of the training and the held-out tensors; whole tensors only."""
    n_data = len({r.dataset for r in rows})
    if holdout == "none":
        return list(range(len(rows))), []
    if holdout == "dataset":
        if n_data < 2:
            raise ValueError("holdout 'dataset' needs two or more datasets (the last one is held out); "
                             "use --holdout tensor with one dataset")
        last = max(r.dataset for r in rows)
        return ([i for i, r in enumerate(rows) if r.dataset != last],
                [i for i, r in enumerate(rows) if r.dataset == last])
    if holdout != "tensor":
        raise ValueError(f"holdout must be one of {HOLDOUTS}, got {holdout!r}")
    if len(rows) < 2:
        raise ValueError("holdout 'tensor' needs two or more tensors in all; use --holdout none")
    k = min(max(1, int(round(fraction * len(rows)))), len(rows) - 1)
    held = sorted(random.Random(seed).sample(range(len(rows)), k))
    return [i for i in range(len(rows)) if i not in held], held


def spearman(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(spearmanr(a, b).statistic)


def _evaluate(net: nn.Module, rows: Sequence[TensorRows], batch_size: int) -> dict[str, Any]:
    if not rows:
        return {}
    preds = [predict_rows(net, r.x, batch_size) for r in rows]
    p, y = torch.cat(preds), torch.cat([r.y for r in rows])
    s = torch.cat([r.score for r in rows])
    per = {r.key: spearman(q, r.score) for r, q in zip(rows, preds)}
    finite = [v for v in per.values() if not math.isnan(v)]
    return {"mse": float(((p - y) ** 2).mean()), "spearman": spearman(p, s),
            "spearman_per_tensor": per, "spearman_tensor_mean": float(np.mean(finite)) if finite else math.nan,
            "rows": int(y.numel()), "tensors": [r.key for r in rows]}


def fit(datasets: Sequence[dict[str, Any]], options: FitOptions, *, progress: bool = True) -> FitResult:
    """Fit the predictor on in-memory datasets (see :func:`autosparse.dataset.load_dataset`)."""
    options.check()
    rows = collect_rows(datasets, options.features, options.target)
    train_idx, eval_idx = split_holdout(rows, options.holdout, options.seed, options.holdout_fraction)
    train_rows, eval_rows = [rows[i] for i in train_idx], [rows[i] for i in eval_idx]
    x = torch.cat([r.x for r in train_rows])
    y = torch.cat([r.y for r in train_rows])
    settings = make_settings(options.features, options.hidden)
    if options.target == "minmax":
        settings["target"] = "surviving score, min-max scaled over each training set"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        net = build_mlp(settings["inputs"], settings["hidden"])
    gen = torch.Generator().manual_seed(options.seed)
    opt = torch.optim.Adam(net.parameters(), lr=options.lr)
    bar = tqdm(range(options.epochs), desc="autos-train", disable=not progress or None, dynamic_ncols=True)
    tic = time.perf_counter()
    for _ in bar:
        net.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for i in range(0, x.shape[0], options.batch_size):
            idx = perm[i:i + options.batch_size]
            loss = nn.functional.mse_loss(net(x[idx]).reshape(-1), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        bar.set_postfix(mse=f"{total / x.shape[0]:.4f}", refresh=False)
    metrics = {"train": _evaluate(net, train_rows, 65536), "eval": _evaluate(net, eval_rows, 65536),
               "seconds": time.perf_counter() - tic}
    return FitResult(net.eval(), settings, metrics, [r.key for r in train_rows], [r.key for r in eval_rows])


def train_predictor(paths: Sequence[str | Path], out: str | Path, options: FitOptions, *,
                    progress: bool = True) -> FitResult:
    """Load ``paths``, fit, and save the predictor to ``out`` (see :mod:`autosparse.predictor`)."""
    datasets = [load_dataset(p) for p in paths]
    result = fit(datasets, options, progress=progress)
    training = {"datasets": [str(p) for p in paths], "options": asdict(options),
                "train_tensors": result.train_keys, "eval_tensors": result.eval_keys,
                "metrics": _jsonable(result.metrics)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_predictor(out, result.net, result.settings, training)
    return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
