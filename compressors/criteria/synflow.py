"""SynFlow (Tanaka et al., 2020): data-free iterative synaptic-flow pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Literal, Optional

import torch
from torch import nn
from torch.func import functional_call

from compressors import register
from compressors.base import Compressor, ScoreMap, Scores
from compressors.rounds import NonFiniteScores, Round, round_sparsities, run_rounds
from utils.schema import option


def synflow_input_shape(mask_loader: Iterable | None) -> tuple[int, ...]:
    """The shape of one input sample, read from the first mask batch (SynFlow uses no data values)."""
    if mask_loader is None:
        raise ValueError("synflow needs the input shape: pass any loader of (inputs, targets) as mask_loader "
                         "(only the shape of its first batch is used)")
    x, _ = next(iter(mask_loader))
    return tuple(x.shape[1:])


def positive_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every floating parameter and buffer made positive (``|t|``) in ``dtype``; others unchanged."""
    state: dict[str, torch.Tensor] = {}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        t = t.detach()
        state[n] = t.abs().to(dtype) if t.is_floating_point() else t
    return state


def path_gradients(model: nn.Module, names: list[str], masks: dict[str, torch.Tensor], input_shape: tuple[int, ...],
                   dtype: torch.dtype, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                            tuple[torch.Tensor | None, ...], bool]:
    """The pass SynFlow and SynFlow-L2 share: ``R = Σ f(1; state)`` for one all-ones input, the scored tensors
    masked (``state[n] ⊙ m``), through ``functional_call`` in ``dtype`` (the model is not modified).  Returns
    the masked scored tensors (detached), ``∂R/∂`` each of them (None where unused) and whether R is finite."""
    device = next(iter(masks.values())).device
    state = dict(state)
    weights = {n: (state[n] * masks[n]).requires_grad_(True) for n in names}
    state.update(weights)
    R = functional_call(model, state, (torch.ones((1, *input_shape), dtype=dtype, device=device),)).sum()
    grads = torch.autograd.grad(R, [weights[n] for n in names], allow_unused=True)
    return {n: w.detach() for n, w in weights.items()}, grads, bool(torch.isfinite(R))


def synflow_scores(model: nn.Module, names: list[str], masks: dict[str, torch.Tensor], input_shape: tuple[int, ...],
                   dtype: torch.dtype, state: dict[str, torch.Tensor] | None = None,
                   out: dict[str, torch.Tensor] | None = None) -> tuple[Scores, bool]:
    """One SynFlow evaluation: ``|θ_m ⊙ ∂R/∂θ_m|`` with ``R = Σ f(1; |θ|)`` where every floating parameter
    and buffer is made positive and the scored weights are masked (``θ_m = |θ| ⊙ m``); computed in
    ``dtype`` through ``functional_call`` (the model itself is not modified).  Scores are written into
    ``out`` when given (tensors shaped like the weights).  Returns the scores and whether R is finite (the
    caller checks the scores)."""
    state = state if state is not None else positive_state(model, dtype)
    weights, grads, finite = path_gradients(model, names, masks, input_shape, dtype, state)
    scores = {}
    for n, g in zip(names, grads):
        w = weights[n]
        dst = out[n] if out is not None else torch.empty_like(w)
        if g is None:
            dst.zero_()
        else:
            torch.mul(w, g, out=dst).abs_()
        scores[n] = dst
    return scores, finite


@dataclass
class SynFlowOptions:
    rounds: int = option(100, "pruning rounds n; round k keeps d^(k/n) of the weights (d = 1 - sparsity)",
                         min=1, max=100000)
    schedule: Optional[Literal["keep_fraction", "prune_fraction"]] = option(
        None, "'keep_fraction': round k keeps d^(k/n) (Tanaka et al. 2020); 'prune_fraction': the official code "
              "feeds the prune fraction s into that schedule, so round k prunes s^(k/n) (~99.9% in round one at "
              "s = 0.9); null: as general.compat says")
    rounds_select: Optional[Literal["exact", "official"]] = option(
        None, "selection inside the rounds: 'exact' (round(d·n) by exact top-k, ties to the lower index, each "
              "round masks the original weights) or 'official' (max(1, floor(d·n)) by torch.topk, and a weight "
              "pruned in one round stays zero in every later round, as the official loop multiplies the weights "
              "in place); null: as general.compat says")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {
        "schedule": {"paper": "keep_fraction", "official": "prune_fraction"},
        "rounds_select": {"paper": "exact", "official": "official"},
    }


@register("synflow")
class SynFlow(Compressor):
    """SynFlow: ``s = |θ ⊙ ∂R/∂θ|``, ``R = Σ f(1; |θ|)`` (all parameters and buffers made positive, an
    input of ones, model in eval mode), applied iteratively.

    With keep fraction ``d = 1 - sparsity`` and n rounds (option ``rounds``), round k (k = 1..n) scores the
    currently masked network and keeps the top ``d^(k/n)`` of the scored weights globally, so only the
    last round reaches d (Tanaka et al. 2020, Alg. 1: the schedule is fed the *keep* fraction).  Option
    ``schedule: "prune_fraction"`` feeds it the prune fraction instead, as the official second-order PaI
    code does: round k keeps ``1 - s^(k/n)`` (~0.1% in round one at s = 0.9).  Option ``rounds_select:
    "official"`` selects inside the rounds as that code does: ``max(1, floor(d n))`` weights by
    ``torch.topk`` (ties in the kernel's order), and a weight pruned in one round stays zero in every later
    round even where a later round's mask keeps it (the official loop multiplies the weights in place).
    Computed in float32, redone in float64 if R or a score overflows.  The original weights are never
    modified (``functional_call``).  The returned scores are those of the last round, so
    ``select(scores, sparsity, "global")`` reproduces the final mask exactly (with ``kept="floor"`` under
    ``rounds_select: "official"``).
    The mask loader is used only for the input shape.
    """

    Options = SynFlowOptions
    needs_data = False
    iterative = True

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        shape = synflow_input_shape(mask_loader)
        model.eval()
        params = dict(model.named_parameters())
        base = params[names[0]].dtype if names else torch.float32
        dtypes = [base] if base == torch.float64 else [base, torch.float64]
        for dtype in dtypes:
            scores, ok = self._rounds(model, names, shape, dtype, sparsity)
            if ok:
                break
        return ScoreMap(scores, {"rounds": self.options.rounds, "dtype": str(dtype).replace("torch.", ""),
                                 "finite": ok})

    def round_state(self, model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The network the rounds score: every floating parameter and buffer made positive."""
        return positive_state(model, dtype)

    def round_scores(self, model: nn.Module, names: list[str], masks: dict[str, torch.Tensor],
                     shape: tuple[int, ...], dtype: torch.dtype, state: dict[str, torch.Tensor],
                     out: dict[str, torch.Tensor]) -> tuple[Scores, bool]:
        """One round's scores under ``masks`` (:func:`synflow_scores`), written into ``out``."""
        return synflow_scores(model, names, masks, shape, dtype, state, out=out)

    def round_settings(self) -> tuple[str, str]:
        """(masking between rounds, count rule inside them) of :func:`compressors.rounds.run_rounds`:
        ``exact`` re-masks the original weights each round (pruned weights score 0), ``official``
        intersects with the previous mask and counts ``max(1, floor(d·n))`` by ``torch.topk``."""
        if self.options.rounds_select == "official":
            return "intersect", "torch_floor"
        return "remask", "exact"

    def _rounds(self, model: nn.Module, names: list[str], shape: tuple[int, ...], dtype: torch.dtype,
                sparsity: float) -> tuple[Scores, bool]:
        """The n rounds of :func:`compressors.rounds.run_rounds` (flat score and mask buffers, one view per
        weight; the threshold of each round taken on the buffer itself, whose flattened order is that of
        :func:`select`), each scoring the positive network under the current masks."""
        params = dict(model.named_parameters())
        state = self.round_state(model, dtype)

        def score(r: Round) -> Scores:
            scores, ok = self.round_scores(model, names, r.masks, shape, dtype, state, r.out)
            if not ok:
                raise NonFiniteScores(f"R is not finite in round {r.index}")
            return scores

        masking, rule = self.round_settings()
        result = run_rounds(score, {n: params[n].shape for n in names}, self.schedule(sparsity), masking=masking,
                            rule=rule, dtype=dtype, device=params[names[0]].device, desc=f"{self.name} rounds")
        return result.scores, result.finite

    def schedule(self, sparsity: float) -> list[float]:
        """The sparsity of each round (:func:`compressors.rounds.round_sparsities`): ``1 - d^(k/n)``
        (``keep_fraction``: the ``exponential`` schedule) or ``s^(k/n)`` (``prune_fraction``, the official
        code's ``sparsity ** ((epoch + 1) / epochs)``); the last is s."""
        kind = "prune_fraction" if self.options.schedule == "prune_fraction" else "exponential"
        return round_sparsities(sparsity, self.options.rounds, kind)
