"""Criteria built on the Hutchinson estimate of the Hessian diagonal.

``Ĥ = (1/(B·K)) Σ_b Σ_k z_bk ⊙ (H_b z_bk)`` with K Rademacher probes z per mask batch and H_b the
Hessian of ℓ_b, the batch's mean loss with logits divided by T (:func:`estimators.hutchinson_diagonal`).
Each run records, per scored tensor, the mean |Ĥ|, the mean standard error of Ĥ (from the spread of
z ⊙ Hz over the B·K probe/batch pairs) and the fraction of entries resolved beyond 2 standard errors,
in the returned scores' ``diagnostics`` (written to results.json under ``criterion_diagnostics``).
"""

from __future__ import annotations

from compressors import register
from compressors.base import Compressor, ScoreMap, model_device
from compressors.basic import estimator_generator
from compressors.estimators import HutchinsonResult, hutchinson_diagonal
from compressors.options import HutchinsonOptions
from compressors.taylor import obd_saliency, taylor_sensitivity


class _HutchinsonBase(Compressor):
    Options = HutchinsonOptions

    def _estimate(self, model, names, mask_loader, loss_fn) -> HutchinsonResult:
        o = self.options
        gen = estimator_generator(o.seed, model_device(model))
        return hutchinson_diagonal(model, names, mask_loader, loss_fn, probes=o.probes, generator=gen,
                                   temperature=o.temperature, chunk_size=o.chunk_size)

    def _scored(self, scores: dict, res: HutchinsonResult) -> ScoreMap:
        o = self.options
        return ScoreMap(scores, {"estimator": "hutchinson", "probes_per_batch": o.probes, "samples": res.samples,
                                 "temperature": o.temperature, "tensors": res.diagnostics()})


@register("hutch_diag")
class HutchDiag(_HutchinsonBase):
    """HD: ``s = Ĥ = (1/(B·K)) Σ_b Σ_k z_bk ⊙ (H_b z_bk)`` (signed; the largest are kept)."""

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> ScoreMap:
        res = self._estimate(model, names, mask_loader, loss_fn)
        return self._scored(dict(res.diag), res)


@register("hutch_pruning")
class HutchPruning(_HutchinsonBase):
    """HP: ``s = ½ θ² ⊙ Ĥ`` (OBD saliency with the Hutchinson diagonal)."""

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> ScoreMap:
        res = self._estimate(model, names, mask_loader, loss_fn)
        return self._scored(obd_saliency(dict(model.named_parameters()), res.diag, names), res)


@register("hts")
class HessianTaylorSensitivity(_HutchinsonBase):
    """HTS: ``s = |θ ⊙ ḡ_T + ½ θ² ⊙ Ĥ|`` with ``ḡ_T = (1/B) Σ_b g_b`` at the same temperature T
    (taken from the same per-batch passes as Ĥ)."""

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> ScoreMap:
        res = self._estimate(model, names, mask_loader, loss_fn)
        return self._scored(taylor_sensitivity(dict(model.named_parameters()), res.mean_grad, res.diag, names), res)
