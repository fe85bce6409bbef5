"""Criteria built on the empirical Fisher diagonal ``F = (1/B) Σ_b g_b ⊙ g_b``.

The per-batch gradients g_b come from :func:`compressors.estimators.fisher_diagonal` (fastest exact
route per device); the mean gradient ``ḡ = (1/B) Σ_b g_b`` is taken from the same pass.
"""

from __future__ import annotations

from compressors import register
from compressors.base import Compressor, Scores
from compressors.estimators import FisherResult, fisher_diagonal
from compressors.options import ChunkOptions
from compressors.taylor import obd_saliency, taylor_sensitivity


class _FisherBase(Compressor):
    Options = ChunkOptions

    def _fisher(self, model, names, mask_loader, loss_fn) -> FisherResult:
        return fisher_diagonal(model, names, mask_loader, loss_fn, chunk_size=self.options.chunk_size)


@register("fisher_diag")
class FisherDiag(_FisherBase):
    """FD: ``s = F = (1/B) Σ_b g_b ⊙ g_b`` (empirical Fisher diagonal)."""

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        return dict(self._fisher(model, names, mask_loader, loss_fn).fisher)


@register("fisher_pruner")
class FisherPruner(_FisherBase):
    """FP: ``s = ½ θ² ⊙ F`` (OBD saliency with the Fisher diagonal in place of the Hessian)."""

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        fisher = self._fisher(model, names, mask_loader, loss_fn).fisher
        return obd_saliency(dict(model.named_parameters()), fisher, names)


@register("fts")
class FisherTaylorSensitivity(_FisherBase):
    """FTS: ``s = |θ ⊙ ḡ + ½ θ² ⊙ F|`` (second-order Taylor sensitivity with the Fisher diagonal)."""

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        res = self._fisher(model, names, mask_loader, loss_fn)
        return taylor_sensitivity(dict(model.named_parameters()), res.mean_grad, res.fisher, names)
