"""Criteria built on the Hutchinson estimate of the Hessian diagonal.

``Ĥ = (1/(B·K)) Σ_b Σ_k z_bk ⊙ (H_b z_bk)`` with K Rademacher probes z per mask batch and H_b the
Hessian of ℓ_b, the batch's mean loss with logits divided by T (:func:`estimators.hutchinson_diagonal`).
Each run records, per scored tensor, the mean |Ĥ|, the mean standard error of Ĥ (from the spread of
z ⊙ Hz over the B·K probe/batch pairs) and the fraction of entries resolved beyond 2 standard errors,
in the returned scores' ``diagnostics`` (written to results.json under ``criterion_diagnostics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

from compressors import register
from compressors.base import Compressor, ScoreMap, model_device
from compressors.estimators import HutchinsonResult, batches_on, hutchinson_diagonal, mean_gradient
from compressors.options import ChunkOptions, estimator_generator
from compressors.taylor import obd_saliency, taylor_sensitivity
from utils.schema import option
from utils.seeding import MAX_SEED


@dataclass
class HutchinsonOptions(ChunkOptions):
    probes: int = option(10, "Rademacher probes K per mask batch", min=1, max=100000)
    temperature: float = option(200.0, "logits are divided by this temperature T", min=0, min_exclusive=True)
    seed: Optional[int] = option(None, "the probes' own seed (default: drawn from torch's global RNG, which "
                                       "the trainer seeds from the run seed)", min=0, max=MAX_SEED)
    probe_params: Optional[Literal["scored", "all"]] = option(
        None, "the tensors the Rademacher probes z run over: 'scored' (the scored tensors) or 'all' (every "
              "parameter, BN and classifier too, as the official code; same expectation, other variance); null: as "
              "general.compat says")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {"probe_params": {"paper": "scored", "official": "all"}}

class _HutchinsonBase(Compressor):
    Options = HutchinsonOptions

    def _estimate(self, model, names, mask_loader, loss_fn) -> HutchinsonResult:
        """The estimate for ``names``; with ``probe_params: "all"`` the probes z (and so ``z ⊙ Hz``) run
        over every parameter of the model, as the official code's, and the result is cut to ``names``."""
        o = self.options
        gen = estimator_generator(o.seed, model_device(model))
        probed = list(names) if o.probe_params == "scored" else list(
            dict.fromkeys([n for n, _ in model.named_parameters()] + list(names)))
        res = hutchinson_diagonal(model, probed, mask_loader, loss_fn, probes=o.probes, generator=gen,
                                  temperature=o.temperature, chunk_size=o.chunk_size)
        if probed == list(names):
            return res
        return HutchinsonResult(diag={n: res.diag[n] for n in names}, stderr={n: res.stderr[n] for n in names},
                                mean_grad={n: res.mean_grad[n] for n in names}, samples=res.samples)

    def _scored(self, scores: dict, res: HutchinsonResult) -> ScoreMap:
        o = self.options
        return ScoreMap(scores, {"estimator": "hutchinson", "probes_per_batch": o.probes, "samples": res.samples,
                                 "temperature": o.temperature, "probe_params": o.probe_params,
                                 "tensors": res.diagnostics()})


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


@dataclass
class HTSOptions(HutchinsonOptions):
    redraw: Optional[bool] = option(
        None, "ḡ_T from its own pass over the mask loader after the Hutchinson pass, drawing the mask data afresh "
              "(a new shuffle and augmentation where the mask loader has them), as the official code's 'HTS: grad "
              "pass'; false: ḡ_T from the Hutchinson pass's own batches; null: as general.compat says")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {**HutchinsonOptions.COMPAT,
                                                   "redraw": {"paper": False, "official": True}}


@register("hts")
class HessianTaylorSensitivity(_HutchinsonBase):
    """HTS: ``s = |θ ⊙ ḡ_T + ½ θ² ⊙ Ĥ|`` with ``ḡ_T = (1/B) Σ_b g_b`` at the same temperature T, taken from
    the same per-batch passes as Ĥ, or (option ``redraw``, the official code) from a second pass of its own."""

    Options = HTSOptions

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> ScoreMap:
        o = self.options
        res = self._estimate(model, names, mask_loader, loss_fn)
        grad = res.mean_grad
        if o.redraw:
            grad = mean_gradient(model, names, batches_on(mask_loader, model_device(model)), loss_fn,
                                 temperature=o.temperature, chunk_size=o.chunk_size)
        return self._scored(taylor_sensitivity(dict(model.named_parameters()), grad, res.diag, names), res)
