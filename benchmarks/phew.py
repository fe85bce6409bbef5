"""PHEW: the vectorised walks of compressors/criteria/phew.py against the authors' loop procedure.

The reference (:func:`authors_tables`, :func:`authors_phew_masks`) is the authors' ``PHEW/phew.py``
(ShreyasMalakarjunPatil/PHEW: ``generate_probability``, ``get_norm``, ``kernel_probability``,
``phew_masks`` with ``select_seed_unit``, ``get_param_options``, ``get_unit_options``,
``conv_to_linear_unit``) re-written statement by statement on NumPy arrays, one walk and one
``np.random.choice`` per step, with two changes that only make the reference faster: their per-walk
``sum_masks`` over every mask is an incremental count, and a row's sum is taken once instead of once per
entry.  tests/test_phew.py checks our criterion against this reference.

Both sides get the same network and the same target; the table prints seconds and the speed-up measured in
this run (ours includes tracing the network and building its tables; the reference's tables are built once,
outside its timing).  ``--quick`` runs a small CNN for the tests.

    .venv/bin/python benchmarks/phew.py            # ResNet18 at CIFAR size, 0.8^k sparsities
    .venv/bin/python benchmarks/phew.py --quick
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import compressors  # noqa: E402
import models  # noqa: E402
from compressors.base import PRUNABLE_TYPES  # noqa: E402


def weight_arrays(model: nn.Module) -> list[np.ndarray]:
    """The authors' ``[p for p in net.parameters() if len(p.size()) != 1]`` for a model whose parameters
    are its Conv/Linear weights and BN vectors: every Conv/Linear weight in registration order, float64."""
    return [m.weight.detach().cpu().double().numpy() for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]


def authors_tables(weights: Sequence[np.ndarray]) -> tuple[list, list, list]:
    """The authors' ``generate_probability``: ``prob[l][j]`` (over output units from input unit j),
    ``reverse_prob[l][i]`` (over input units from output unit i), ``kernel_prob[l][i][j]`` (over kernel
    positions, an array shaped like the kernel)."""
    prob, reverse_prob, kernel_prob = [], [], []
    for w in weights:
        p2 = np.abs(w)
        p1 = np.zeros((p2.shape[0], p2.shape[1]))
        for i in range(p2.shape[0]):  # get_norm
            for j in range(p2.shape[1]):
                p1[i][j] = np.sum(np.absolute(p2[i][j]))
        rows_b, rows_f = [], []
        for table, rows in ((p1, rows_b), (np.transpose(p1), rows_f)):
            for par in table:
                s = sum(par)
                rows.append([float(float(o) / float(s)) for o in par] if s != 0
                            else [float(1.0 / float(par.shape[0])) for _ in par])
        kernels = []
        for i in range(p2.shape[0]):  # kernel_probability
            f = p2[i].copy()
            for j in range(f.shape[0]):
                f[j] = f[j] / float(np.sum(np.absolute(f[j])))
            kernels.append(f)
        prob.append(rows_f)
        reverse_prob.append(rows_b)
        kernel_prob.append(kernels)
    return prob, reverse_prob, kernel_prob


def _param_options(mask: np.ndarray, prev: int, p: list, kprob: list, forward: bool) -> tuple[int, int, int, int]:
    """``get_param_options``: the unit by ``p``, then a kernel position (their ``inds // kh, inds % kh``)."""
    if forward:
        idx1, idx2 = int(np.random.choice(list(range(mask.shape[0])), 1, p=p)[0]), int(prev)
    else:
        idx1, idx2 = int(prev), int(np.random.choice(list(range(mask.shape[1])), 1, p=p)[0])
    k = kprob[idx1][idx2]
    inds = int(np.random.choice(list(range(k.shape[0] * k.shape[1])), 1, p=k.reshape(-1))[0])
    return idx1, idx2, inds // k.shape[0], inds % k.shape[0]


def authors_phew_masks(weights: Sequence[np.ndarray], prune_perc: float, tables: tuple[list, list, list],
                       seed: int, kernel_conserved: bool = False) -> tuple[list[np.ndarray], int]:
    """The authors' ``phew_masks(network, prune_perc)``: walks alternate forward (from input unit 0, 1, ...)
    and backward (from output unit 0, 1, ...) until ``int((1 - prune_perc/100)·N)`` weights are enabled,
    checked after each complete walk.  Python's ``random`` and NumPy's global RNG are seeded with ``seed``.
    Returns the masks and the number of walks."""
    random.seed(seed)
    np.random.seed(seed)
    prob, reverse_prob, kernel_prob = tables
    masks = [np.zeros(w.shape) for w in weights]
    num = len(masks)
    target = int((1 - prune_perc / 100.0) * sum(w.size for w in weights))
    count, walk = 0, 0
    robin_in, robin_out, conv_length = -1, -1, 0

    def enable(mask: np.ndarray, index: tuple, whole: bool) -> None:
        nonlocal count
        if whole:
            count += int((mask[index[:2]] == 0).sum())
            mask[index[:2]] = 1
        elif mask[index] == 0:
            mask[index] = 1
            count += 1

    while count < target:
        if walk % 2 == 0:
            conv_length = 0
            robin_in = robin_in + 1 if robin_in < masks[0].shape[1] - 1 else 0
            prev, ctol, k = robin_in, 0, 0
            while k < num:
                if masks[k].ndim == 4:
                    if k + 3 < num and masks[k + 3].ndim == 4 and masks[k + 3].shape[2] == 1:
                        k = k + random.choice([0, 3])
                    i1, i2, i3, i4 = _param_options(masks[k], prev, prob[k][int(prev)], kernel_prob[k], True)
                    conv_length = masks[k].shape[0]
                    enable(masks[k], (i1, i2, i3, i4), kernel_conserved)
                    prev, ctol = i1, 1
                    if k + 1 < num and masks[k + 1].ndim == 4 and masks[k + 1].shape[2] == 1:
                        k = k + 1
                    k = k + 1
                elif masks[k].ndim == 2:
                    if ctol == 1:  # conv_to_linear_unit, forward
                        per = int(masks[k].shape[1] / conv_length)
                        prev, ctol = random.choice(list(range(per))) + per * prev, 0
                    i1 = int(np.random.choice(list(range(masks[k].shape[0])), 1, p=prob[k][int(prev)])[0])
                    enable(masks[k], (i1, int(prev)), False)
                    prev, k = i1, k + 1
        else:
            robin_out = robin_out + 1 if robin_out < masks[-1].shape[0] - 1 else 0
            prev, ltoc, linear_length, k = robin_out, 0, 0, 0
            while k < num:
                m = masks[num - k - 1]
                if m.ndim == 2:
                    i2 = int(np.random.choice(list(range(m.shape[1])), 1, p=reverse_prob[num - k - 1][int(prev)])[0])
                    enable(m, (int(prev), i2), False)
                    prev, ltoc, linear_length, k = i2, 1, m.shape[1], k + 1
                elif m.ndim == 4:
                    if ltoc == 1:  # conv_to_linear_unit, backward
                        prev, ltoc = int(prev / int(linear_length / conv_length)), 0
                    if m.shape[2] == 1:
                        k = k + random.choice([0, 1])
                    m = masks[num - k - 1]
                    i1, i2, i3, i4 = _param_options(m, prev, reverse_prob[num - k - 1][int(prev)],
                                                    kernel_prob[num - k - 1], False)
                    enable(m, (i1, i2, i3, i4), kernel_conserved)
                    prev = i2
                    k = k + 3 if m.shape[2] == 1 else k + 1
        walk += 1
    return masks, walk


def ours(model: nn.Module, sparsity: float, seed: int, walkers: int) -> tuple[dict, float, int]:
    crit = compressors.build("phew", seed=seed, walkers=walkers)
    names = compressors.prunable_names(model, include_classifier=True)
    start = time.perf_counter()
    scores = crit.score(model, None, None, sparsity=sparsity, params=names)
    return scores, time.perf_counter() - start, scores.diagnostics["walks"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small CNN at two sparsities (for the tests)")
    parser.add_argument("--powers", type=int, nargs="*", default=[18, 17, 16],
                        help="sparsities 1 - 0.8^k (the authors' prune_perc list), one row per k")
    parser.add_argument("--walkers", type=int, default=1024, help="our option walkers")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.quick:
        model, powers, what = models.build("digits_cnn", num_classes=10, input_shape=(3, 8, 8), width=8), [10, 8], \
            "digits_cnn width 8"
    else:
        model, powers, what = models.build("resnet18", num_classes=10), args.powers, "resnet18 (CIFAR size)"
    weights = weight_arrays(model)
    total = sum(w.size for w in weights)
    start = time.perf_counter()
    tables = authors_tables(weights)
    table_s = time.perf_counter() - start
    print(f"PHEW walks on {what}: {total:,} conv/linear weights; the reference's tables took {table_s:.1f} s "
          "(built once, not in its column)")
    ours(model, 1.0 - 0.8 ** 30, args.seed, args.walkers)  # warm-up, not timed (lazy kernel/allocator set-up)
    print("| sparsity | kept (ours) | walks ours | walks reference | ours s | reference s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for k in powers:
        sparsity = 1.0 - 0.8 ** k
        scores, t_ours, walks = ours(model, sparsity, args.seed, args.walkers)
        kept = sum(int((s > 0).sum()) for s in scores.values())
        start = time.perf_counter()
        _, ref_walks = authors_phew_masks(weights, 100.0 * sparsity, tables, args.seed)
        t_ref = time.perf_counter() - start
        print(f"| {sparsity:.4f} (0.8^{k}) | {kept:,} | {walks:,} | {ref_walks:,} | {t_ours:.2f} | {t_ref:.2f} "
              f"| x{t_ref / t_ours:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
