"""The masked layers of Synaptic-Flow's ``Layers/layers.py``, which NTK-SAP's and PX's authors' code both build
on, written once for the tests that reproduce those procedures (tests/test_ntk_sap.py, tests/test_px.py):
a ``weight_mask`` buffer multiplied into the weight at every forward."""

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
