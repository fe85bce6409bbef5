"""SynFlow-L2 (Gebhart, Saxena and Schrater 2021, "A Unified Paths Perspective for Pruning at Initialization"):
SynFlow on the network whose parameters are squared, the path kernel's L2 counterpart of SynFlow's L1 flow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from compressors import register
from compressors.criteria.synflow import SynFlow, path_gradients
from compressors.masks import Scores
from compressors.rounds import round_sparsities
from utils.schema import option


def squared_state(model: nn.Module, dtype: torch.dtype, buffers: str) -> dict[str, torch.Tensor]:
    """Every floating parameter squared (``θ²``: weights, biases, BN scales and shifts) in ``dtype``; floating
    buffers (BN running statistics) as they are (``buffers="unchanged"``) or squared (``"squared"``)."""
    state: dict[str, torch.Tensor] = {}
    for n, t in model.named_parameters():
        t = t.detach()
        state[n] = t.to(dtype).square() if t.is_floating_point() else t
    for n, t in model.named_buffers():
        t = t.detach()
        if t.is_floating_point():
            t = t.to(dtype)
            state[n] = t.square() if buffers == "squared" else t.clone()
        else:
            state[n] = t
    return state


def synflow_l2_scores(model: nn.Module, names: list[str], masks: dict[str, torch.Tensor], input_shape: tuple[int, ...],
                      dtype: torch.dtype, state: dict[str, torch.Tensor],
                      out: dict[str, torch.Tensor] | None = None) -> tuple[Scores, bool]:
    """One SynFlow-L2 evaluation: ``|θ| ⊙ m ⊙ |∂R/∂p|`` at ``p = θ² ⊙ m``, with ``R = Σ f(1; θ²)`` the summed
    output of the squared network (``state``, :func:`squared_state`) for one all-ones input; computed in
    ``dtype`` through ``functional_call`` (the model is not modified).  Returns the scores (written into
    ``out`` when given) and whether R is finite."""
    params = dict(model.named_parameters())
    weights, grads, finite = path_gradients(model, names, masks, input_shape, dtype, state)
    scores = {}
    for n, g in zip(names, grads):
        dst = out[n] if out is not None else torch.empty_like(weights[n])
        if g is None:
            dst.zero_()
        else:
            torch.mul(params[n].detach().to(dtype).abs(), g.abs(), out=dst).mul_(masks[n])
        scores[n] = dst
    return scores, finite


@dataclass
class SynFlowL2Options:
    rounds: int = option(100, "pruning rounds n; round k keeps d^(k/n) of the weights (d = 1 - sparsity); "
                              "default 100: PHEW's --synflow_iterations and px-ntk-pruning's CIFAR scripts",
                         min=1, max=100000)
    buffers: Literal["unchanged", "squared"] = option(
        "unchanged", "floating buffers (BN running mean / variance) of the squared network: 'unchanged' (only the "
                     "parameters are squared: the paper's θ², PHEW's synflowl2_utils) or 'squared' (px-ntk-pruning "
                     "squares every state_dict entry); the same at initialisation (mean 0, variance 1)")


@register("synflow_l2")
class SynFlowL2(SynFlow):
    """SynFlow-L2: ``s = |θ| ⊙ |∂R/∂p|`` at ``p = θ²``, ``R = Σ f(1; θ²)``: every parameter squared (biases
    and BN parameters included), model in eval mode, one all-ones input; pruned weights score 0.

    The score is the one both public implementations compute: PHEW's ``Prune/synflowl2_utils.py``
    (``|∂R/∂p| · sqrt(p)``) and px-ntk-pruning's ``lib/pruners.py`` ``SynFlowL2.score``
    (``|∂R/∂p · θ|``).  It runs on the shared rounds of :func:`compressors.rounds.run_rounds` as SynFlow
    does: n rounds (option ``rounds``), round k keeps ``d^(k/n)`` of the scored weights globally by exact
    top-k, each round re-masking the squared dense weights (both codes rebuild the network from the dense
    copy every round); the returned scores are the last round's, so ``select(scores, s, "global")`` gives
    the final mask.  Differences kept out: PHEW also masks the bias of an output channel whose weights are
    all pruned, and selects each round by a percentile threshold (``>``) instead of an exact count;
    px-ntk-pruning keeps ``N - floor((1 - d) N)``.  Computed in float32, redone in float64 if R or a score
    overflows.
    """

    Options = SynFlowL2Options
    scopes = ("global",)

    def round_state(self, model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return squared_state(model, dtype, self.options.buffers)

    def round_scores(self, model, names, masks, shape, dtype, state, out) -> tuple[Scores, bool]:
        return synflow_l2_scores(model, names, masks, shape, dtype, state, out=out)

    def round_settings(self) -> tuple[str, str]:
        return "remask", "exact"

    def schedule(self, sparsity: float) -> list[float]:
        return round_sparsities(sparsity, self.options.rounds, "exponential")
