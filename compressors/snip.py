"""SNIP (Lee et al., 2019): connection sensitivity at initialisation."""

from __future__ import annotations

import torch

from compressors import register
from compressors.base import Compressor, Scores
from compressors.estimators import summed_gradient


@register("snip")
class SNIP(Compressor):
    """SNIP: s = |θ ⊙ Σ_b g_b| / Σ |θ ⊙ Σ_b g_b| (normalised to sum 1 over all prunable weights)."""

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        params = dict(model.named_parameters())
        grads = summed_gradient(model, names, mask_loader, loss_fn)
        raw = {n: (params[n].detach() * grads[n]).abs() for n in names}
        total = torch.stack([s.sum() for s in raw.values()]).sum()
        return {n: s / total for n, s in raw.items()} if total > 0 else raw
