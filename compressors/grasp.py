"""GraSP (Wang et al., 2020): gradient signal preservation."""

from __future__ import annotations

from compressors import register
from compressors.base import Compressor, Scores, prunable_names
from compressors.estimators import grasp_hg
from compressors.options import GraspOptions


@register("grasp")
class GraSP(Compressor):
    """GraSP: ``S = -θ ⊙ (H g)``, normalised by ``|Σ S|``; the weights with the **largest** S are removed.

    ``g = Σ_b ∇_W ℓ_b`` and H the Hessian of ``Σ_b ℓ_b``, both with logits divided by T (default 200) and
    taken with respect to W = the weights of *all* Conv and Linear layers (the prunable weights plus the
    classifier's weight; no biases, no BN parameters), as in the original GraSP code; any extra scored
    parameter (e.g. a bias when biases are pruned) is added to W.  The sum in the normalisation runs over
    W.  Since a higher score means *keep* here, the returned score is ``-S / |Σ S|``, so the mask keeps
    the lowest S (Wang et al. 2020, Alg. 1).  Some public code keeps the highest S and takes g over every
    parameter; this implementation follows the paper/issue instead.
    """

    Options = GraspOptions

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        W = list(dict.fromkeys(prunable_names(model, include_classifier=True) + list(names)))
        params = dict(model.named_parameters())
        _, hg = grasp_hg(model, W, mask_loader, loss_fn, temperature=self.options.temperature,
                         chunk_size=self.options.chunk_size)
        S = {n: -params[n].detach() * hg[n] for n in W}
        norm = sum(s.sum() for s in S.values()).abs()
        return {n: -S[n] / norm if norm > 0 else -S[n] for n in names}
