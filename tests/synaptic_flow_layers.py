"""What NTK-SAP's and PX's authors' code both take from Synaptic-Flow, written once for the tests that reproduce
those procedures (tests/test_ntk_sap.py, tests/test_px.py): the masked layers of ``Layers/layers.py`` (a
``weight_mask`` buffer multiplied into the weight at every forward) and ``Pruner._global_mask``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedConv2d(nn.Conv2d):
    """``Layers/layers.py`` ``Conv2d``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", torch.ones(self.weight.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight_mask * self.weight, self.bias)


class MaskedLinear(nn.Linear):
    """``Layers/layers.py`` ``Linear``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", torch.ones(self.weight.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_mask * self.weight, self.bias)


def global_mask(pairs, scores, sparsity: float) -> None:
    """``Pruner._global_mask``: ``sparsity`` is their density; every score at or below the k-th smallest is
    pruned (ties included)."""
    global_scores = torch.cat([torch.flatten(v) for v in scores])
    k = int((1.0 - sparsity) * global_scores.numel())
    if not k < 1:
        threshold, _ = torch.kthvalue(global_scores, k)
        for (mask, _), score in zip(pairs, scores):
            mask.copy_(torch.where(score <= threshold, torch.tensor([0.0]), torch.tensor([1.0])))
