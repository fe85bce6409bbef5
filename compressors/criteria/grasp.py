"""GraSP (Wang et al., 2020): gradient signal preservation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

from compressors import register
from compressors.base import Compressor, Scores, prunable_names
from compressors.estimators import grasp_hg
from compressors.options import ChunkOptions
from utils.schema import option


@dataclass
class GraspOptions(ChunkOptions):
    temperature: Optional[float] = option(None, "logits are divided by this temperature T in both GraSP passes; "
                                                "null: as general.compat says (paper 200, official 1)",
                                          min=0, min_exclusive=True)
    keep: Optional[Literal["lowest", "highest"]] = option(
        None, "which S = -θ ⊙ Hg are kept: 'lowest' (Wang et al. 2020 remove the largest S) or 'highest' (the "
              "official code); null: as general.compat says")
    wrt: Optional[Literal["weights", "all"]] = option(
        None, "what g, H and the normalising sum run over: 'weights' (every Conv/Linear weight, classifier "
              "included) or 'all' (every parameter: BN, biases too; the official code); null: as general.compat says")

    redraw: Optional[bool] = option(
        None, "g and Hg from two passes over the mask loader, each drawing the mask data afresh (a new shuffle "
              "and augmentation where the mask loader has them: compressor.mask_order / mask_transform), as the "
              "official code's two loops; false: both from the same batches (one pass when they fit in one chunk); "
              "null: as general.compat says")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {
        "temperature": {"paper": 200.0, "official": 1.0},
        "keep": {"paper": "lowest", "official": "highest"},
        "wrt": {"paper": "weights", "official": "all"},
        "redraw": {"paper": False, "official": True},
    }


@register("grasp")
class GraSP(Compressor):
    """GraSP: ``S = -θ ⊙ (H g)``, normalised by ``|Σ S|``; the weights with the **largest** S are removed.

    ``g = Σ_b ∇_W ℓ_b`` and H the Hessian of ``Σ_b ℓ_b``, both with logits divided by T (option
    ``temperature``, paper 200) and taken with respect to W (option ``wrt``): ``"weights"`` = the weights
    of *all* Conv and Linear layers (the prunable weights plus the classifier's weight; no biases, no BN
    parameters), as in the original GraSP code; any extra scored parameter (e.g. a bias when biases are
    pruned) is added to W.  The sum in the normalisation runs over W.  Option ``keep``: ``"lowest"``
    (Wang et al. 2020, Alg. 1: remove the largest S) returns ``-S / |Σ S|`` since a higher score means
    *keep* here; ``"highest"`` returns ``S / |Σ S|``.  ``general.compat: "official"`` selects the official
    second-order PaI code's variant: T = 1, W = every parameter (``wrt: "all"``), keep the highest S.
    """

    Options = GraspOptions

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        o = self.options
        if o.wrt == "all":
            W = list(dict.fromkeys([n for n, _ in model.named_parameters()] + list(names)))
        else:
            W = list(dict.fromkeys(prunable_names(model, include_classifier=True) + list(names)))
        params = dict(model.named_parameters())
        _, hg = grasp_hg(model, W, mask_loader, loss_fn, temperature=o.temperature, chunk_size=o.chunk_size,
                         redraw=bool(o.redraw))
        S = {n: -params[n].detach() * hg[n] for n in W}
        norm = sum(s.sum() for s in S.values()).abs()
        sign = -1.0 if o.keep == "lowest" else 1.0
        return {n: sign * S[n] / norm if norm > 0 else sign * S[n] for n in names}
