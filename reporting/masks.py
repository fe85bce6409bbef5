"""Mask overlap: intersection over union of the kept weights of two masks.

Two independent random masks that each keep a fraction ``k = 1 - s`` of ``N`` weights share ``k²N``
kept weights in expectation and their union holds ``(2k - k²)N``, so their IoU is
``k / (2 - k) = (1 - s) / (1 + s)``: the chance level every overlap is read against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from compressors import check_masks
from reporting.runs import CRITERION, group_hash
from runspec.folder import Files
from utils.io import load_torch

Mask = Mapping[str, torch.Tensor]


def chance_iou(sparsity: float) -> float:
    """Expected IoU of the kept sets of two independent random masks at this sparsity."""
    return (1.0 - sparsity) / (1.0 + sparsity)


def load_mask(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """``mask.pt`` of a run folder as ``{param: bool tensor}``; a ValueError (or OSError) naming the file when
    it is missing, damaged (its content digest), or not a dict of binary tensors."""
    path = Path(run_dir) / Files.MASK
    masks = load_torch(path)
    if not isinstance(masks, dict):
        raise ValueError(f"{path}: holds {type(masks).__name__}, not a dict of masks")
    check_masks(masks, str(path))
    return {k: v.bool() for k, v in masks.items()}


class MaskReader:
    """Reads the masks of run folders; ``problems`` maps the run folders whose ``mask.pt`` could not be used
    to the reason (a report lists them among its issues instead of leaving them out silently)."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}

    def get(self, run_dir: str) -> dict[str, torch.Tensor] | None:
        """The mask of ``run_dir``, or None (and the reason in ``problems``) when it cannot be used."""
        try:
            return load_mask(run_dir)
        except (OSError, ValueError, RuntimeError, EOFError) as exc:
            self.problems[run_dir] = f"{Files.MASK} cannot be used (left out of the mask overlap): {exc}"
            return None


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
