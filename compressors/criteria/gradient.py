"""Gradient-norm pruning: keep the weights with the largest mean-gradient magnitude."""

from __future__ import annotations

from compressors import register
from compressors.base import Compressor, Scores
from compressors.estimators import mean_gradient
from compressors.options import ChunkOptions


@register("grad_norm")
class GradNorm(Compressor):
    """grad_norm: ``s = |ḡ|`` with ``ḡ = (1/B) Σ_b g_b`` (chunked summed-loss passes)."""

    Options = ChunkOptions

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        g = mean_gradient(model, names, mask_loader, loss_fn, chunk_size=self.options.chunk_size)
        return {n: g[n].abs() for n in names}
