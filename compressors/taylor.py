"""The two second-order Taylor saliencies shared by the Fisher and Hutchinson families.

With a diagonal curvature estimate D (Fisher diagonal F, or Hutchinson diagonal Ĥ), removing weight θ
changes the loss by ΔL ≈ −θ·g + ½·θ²·D (second-order Taylor expansion, diagonal approximation):

- OBD saliency (LeCun et al., 1990; FP and HP in the paper): ``½ θ² ⊙ D``;
- Taylor sensitivity (FTS and HTS in the paper): ``|θ ⊙ ḡ + ½ θ² ⊙ D|``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


def obd_saliency(params: Mapping[str, torch.Tensor], diag: Mapping[str, torch.Tensor],
                 names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``½ θ² ⊙ D`` per named tensor."""
    return {n: 0.5 * params[n].detach() ** 2 * diag[n] for n in names}


def taylor_sensitivity(params: Mapping[str, torch.Tensor], grad: Mapping[str, torch.Tensor],
                       diag: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``|θ ⊙ ḡ + ½ θ² ⊙ D|`` per named tensor."""
    out = {}
    for n in names:
        theta = params[n].detach()
        out[n] = (theta * grad[n] + 0.5 * theta ** 2 * diag[n]).abs()
    return out
