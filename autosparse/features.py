"""Per-weight input features of the AutoSparse predictor.

AutoSparse (arXiv 2408.14757) describes every weight at initialisation by its value ``theta0`` and its
mean mask-data gradient ``g0``.  ``features="raw"`` feeds them unchanged, as the paper does;
``features="standardized"`` (the default here) shifts and scales each feature to zero mean and unit
variance *within each tensor*, because raw gradients change scale with the dataset size, the loss
and the initialisation, which hurts transfer to other networks.
"""

from __future__ import annotations

from typing import Literal

import torch

FEATURE_NAMES = ("theta0", "grad0")
FeatureMode = Literal["standardized", "raw"]
FEATURE_MODES: tuple[str, ...] = ("standardized", "raw")


def feature_stats(theta0: torch.Tensor, grad0: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, scale)``, each of shape (2,), with ``features = (x - shift) / scale`` for x = (theta0, g0).

    ``standardized``: the tensor's mean and population standard deviation (a constant feature gets
    scale 1, i.e. becomes 0); ``raw``: shift 0, scale 1.
    """
    if mode not in FEATURE_MODES:
        raise ValueError(f"features must be one of {FEATURE_MODES}, got {mode!r}")
    if mode == "raw":
        return torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    cols = [theta0.detach().reshape(-1).double(), grad0.detach().reshape(-1).double()]
    shift = torch.stack([c.mean() if c.numel() else c.new_zeros(()) for c in cols])
    scale = torch.stack([c.std(unbiased=False) if c.numel() > 1 else c.new_ones(()) for c in cols])
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return shift, scale


def feature_rows(theta0: torch.Tensor, grad0: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 rows ``(n, 2)`` for flat slices of theta0 and g0 (``shift``/``scale`` of the whole tensor)."""
    x = torch.stack([theta0.detach().reshape(-1).double(), grad0.detach().reshape(-1).double()], dim=1)
    return ((x - shift.to(x.device)) / scale.to(x.device)).float()


def tensor_features(theta0: torch.Tensor, grad0: torch.Tensor, mode: str = "standardized") -> torch.Tensor:
    """All rows ``(theta0.numel(), 2)`` of one tensor."""
    shift, scale = feature_stats(theta0, grad0, mode)
    return feature_rows(theta0, grad0, shift, scale)
