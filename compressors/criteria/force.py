"""Iter-SNIP, FORCE and GraSP-It (de Jorge et al., ICLR 2021, "Progressive Skeletonization: Trimming more fat
from a network at initialization"): SNIP-like saliencies recomputed over many pruning rounds.

All three run on the shared rounds of :func:`compressors.rounds.run_rounds`.  Round k averages the
gradient over ``num_batches`` fresh mask batches at the masked weights ``θ0 ⊙ m_{k-1}`` and keeps the top
``d_k`` of the saliencies globally; the last round's saliencies are returned, so
``select(scores, s, "global")`` gives the final mask.  What distinguishes them:

- ``iter_snip`` (the paper's Iterative SNIP, Sec. 4.1; authors' ``prune_method=1``): saliency
  ``|θ0 ⊙ ḡ|``, pruned weights stay pruned (``masking="keep_out"``);
- ``force`` (FORCE, Sec. 4.2, Alg. 2; ``prune_method=3``): saliency ``|θ0 ⊙ ḡ(θ0 ⊙ m)|`` of the **dense**
  initial weights with the gradient taken at the masked ones and not masked, every round re-masking the
  dense network (``masking="remask"``), so a weight pruned in one round can come back in a later one;
- ``grasp_it`` (the paper's iterative GraSP baseline; ``prune_method=2``): saliency ``ḡ²`` (the authors'
  "gradient norm approximation" of GraSP), pruned weights stay pruned.

Authors' code: naver/force, ``pruning/pruning_algos.py`` (``iterative_pruning``, ``get_average_saliencies``,
``get_average_gradients``, ``get_mask``) and ``train_cifar_tiny_imagenet.py`` (defaults).  Their
``pruning_factor`` is the fraction of weights **kept** (the density 1 - s of our ``sparsity``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch
import torch.nn.functional as F

from compressors import register
from compressors.base import Compressor, ScoreMap
from compressors.estimators import mean_gradient
from compressors.options import ChunkOptions
from compressors.rounds import BatchStream, Round, round_sparsities, run_rounds
from utils.schema import option


def nll_on_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The authors' saliency loss: ``F.nll_loss`` applied to the raw logits, ``-mean_i logit_i[y_i]`` (their
    models end with a Linear layer, no log-softmax), while they train with cross-entropy."""
    return F.nll_loss(logits, targets)


@dataclass
class ProgressiveOptions(ChunkOptions):
    rounds: int = option(60, "pruning rounds n (the authors' --num_steps; 60 in their CIFAR, Tiny-ImageNet and "
                             "ImageNet commands, 10 in their script's default)", min=1, max=100000)
    schedule: Literal["exponential", "linear"] = option(
        "exponential", "density after round k: 'exponential' d^(k/n) (the authors' --mode exp, their default) or "
                       "'linear' 1 - k(1 - d)/n (--mode linear); d = 1 - sparsity")
    num_batches: Optional[int] = option(
        1, "mask batches averaged per round, fresh ones every round (the mask loader is iterated on, a new pass "
           "starting when one ends); the authors' --num_batches (1 for CIFAR-10, 10 for CIFAR-100, 20 for "
           "Tiny-ImageNet); null: every mask batch in every round (their -1)", min=1)
    loss: Literal["training", "nll_logits"] = option(
        "training", "the loss whose gradient gives the saliency: 'training' (the run's loss, cross-entropy: the "
                    "paper's L) or 'nll_logits' (the authors' code: F.nll_loss on the raw logits, -mean logit_y)")
    rounds_select: Literal["exact", "floor"] = option(
        "exact", "kept count inside the rounds: 'exact' round(d·N) by exact top-k (ties to the lower index) or "
                 "'floor' int(d·N) (the authors' get_mask); the final count is compressor.kept_count's")


class _Progressive(Compressor):
    """Base of the three: ``saliency(θ0, ḡ)`` and the masking between rounds distinguish them."""

    Options = ProgressiveOptions
    iterative = True
    scopes: ClassVar[tuple[str, ...]] = ("global",)
    masking: ClassVar[str] = "keep_out"

    def saliency(self, theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """SNIP's connection sensitivity ``|θ0 ⊙ ḡ|`` (overridden by GraSP-It)."""
        return (theta * grad).abs()

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> ScoreMap:
        o = self.options
        params = dict(model.named_parameters())
        dense = {n: params[n].detach().clone() for n in names}
        loss = nll_on_logits if o.loss == "nll_logits" else loss_fn
        stream = BatchStream(mask_loader)

        def score(r: Round):
            """Round k: the gradient averaged over fresh batches at θ0 ⊙ m_{k-1}, unmasked."""
            with torch.no_grad():
                for n in names:
                    params[n].copy_(dense[n] * r.masks[n])
            grads = mean_gradient(model, names, stream.take(o.num_batches), loss, chunk_size=o.chunk_size)
            return {n: self.saliency(dense[n], grads[n]) for n in names}

        first = params[names[0]]
        schedule = round_sparsities(sparsity, o.rounds, o.schedule)
        result = run_rounds(score, {n: params[n].shape for n in names}, schedule, masking=self.masking,
                            rule=o.rounds_select, dtype=first.dtype, device=first.device,
                            desc=f"{self.name} rounds")
        return ScoreMap(result.scores, {"rounds": o.rounds, "rounds_done": result.rounds_done,
                                        "revived": result.revived, "finite": result.finite})


@register("iter_snip")
class IterSNIP(_Progressive):
    """Iterative SNIP (de Jorge et al. 2021, Sec. 4.1): round k scores ``|θ0 ⊙ ḡ(θ0 ⊙ m_{k-1})|`` and keeps
    the top ``d_k`` of the weights the previous rounds kept (pruned weights never come back; the authors'
    code zeroes their weights and gradients and gives them the minimum saliency)."""

    masking = "keep_out"


@register("force")
class FORCE(_Progressive):
    """FORCE (de Jorge et al. 2021, Sec. 4.2, Alg. 2): round k scores ``|θ0 ⊙ ∂L(θ0 ⊙ m_{k-1})/∂(θ0 ⊙ m)|``,
    the connection sensitivity of the dense initial weights θ0 at the masked network, gradients not masked,
    and keeps the top ``d_k`` of **all** weights: the dense network is re-masked every round, so weights
    pruned earlier can come back (diagnostic ``revived`` counts how often)."""

    masking = "remask"


@register("grasp_it")
class GraSPIt(_Progressive):
    """GraSP-It (de Jorge et al. 2021, the iterative GraSP baseline; authors' ``prune_method=2``): round k
    scores ``ḡ(θ0 ⊙ m_{k-1})²``, the authors' code's approximation of GraSP's gradient-norm criterion, and
    keeps the top ``d_k`` of the weights the previous rounds kept."""

    masking = "keep_out"

    def saliency(self, theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.square()
