"""Mask overlap: intersection over union of the kept weights of two masks.

Two independent random masks that each keep a fraction ``k = 1 - s`` of ``N`` weights share ``k²N``
kept weights in expectation and their union holds ``(2k - k²)N``, so their IoU is
``k / (2 - k) = (1 - s) / (1 + s)``: the chance level every overlap is read against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from reporting.runs import CRITERION, group_hash
from spec.folder import Files
from utils.io import load_torch

Mask = Mapping[str, torch.Tensor]


def chance_iou(sparsity: float) -> float:
    """Expected IoU of the kept sets of two independent random masks at this sparsity."""
    return (1.0 - sparsity) / (1.0 + sparsity)


def load_mask(run_dir: str | Path) -> dict[str, torch.Tensor] | None:
    """``mask.pt`` of a run folder as ``{param: bool tensor}`` (None if it is missing or unreadable)."""
    path = Path(run_dir) / Files.MASK
    try:
        masks = load_torch(path)
    except (OSError, RuntimeError, EOFError):
        return None
    return {k: v.bool() for k, v in masks.items()}


def mask_iou(a: Mask, b: Mask) -> float:
    """|A ∩ B| / |A ∪ B| of kept weights over the parameters present (with equal shapes) in both."""
    inter = union = 0
    for name in a.keys() & b.keys():
        x, y = a[name].bool(), b[name].bool()
        if x.shape != y.shape:
            raise ValueError(f"mask shapes differ for {name}: {tuple(x.shape)} vs {tuple(y.shape)}")
        inter += int((x & y).sum())
        union += int((x | y).sum())
    return inter / union if union else float("nan")


def pairing_key(config: dict) -> str:
    """Runs with the same key are the same experiment except for the criterion (and its options)."""
    return group_hash(config, without=CRITERION)
