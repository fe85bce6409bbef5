"""One multi-round scoring loop for every iterative criterion.

An iterative criterion scores the network, keeps the best fraction of the weights for this round, scores the
network again under that mask, and so on for n rounds; only the last round reaches the target sparsity.
SynFlow (Tanaka et al. 2020, Alg. 1), SynFlow-L2 (Gebhart et al. 2021), Iter-SNIP, FORCE and GraSP-It
(de Jorge et al., ICLR 2021, Alg. 1 and 2) are all this loop with their own per-round score function; what
differs between them is said by three choices, each made here once:

- the **schedule** (:func:`round_sparsities`): the sparsity after each round: ``exponential`` (density
  d^(k/n), d = 1 - s: SynFlow's keep-fraction schedule, FORCE's ``mode='exp'``), ``linear`` (density
  1 - k(1 - d)/n: FORCE's ``mode='linear'``) or ``prune_fraction`` (sparsity s^(k/n): the official
  second-order PaI code's SynFlow loop);
- the **masking between rounds** (``masking``): ``remask``: each round's mask is chosen among every weight
  from this round's scores, the network being re-masked from its dense weights, so a pruned weight can come
  back (FORCE; SynFlow, whose pruned weights score 0 and come back only through ties); ``keep_out``: the
  mask is chosen among the weights the previous round kept, so a pruned weight never comes back
  (Iter-SNIP, GraSP-It); ``intersect``: chosen among every weight, then intersected with the previous mask
  (the official SynFlow loop, which multiplies the weights in place);
- the **count rule inside the rounds** (``rule``, :data:`ROUND_RULES`): ``exact``: round(d·N) entries by
  the exact top-k of :func:`compressors.masks.select` (ties to the lower index); ``floor``: floor(d·N) by
  the same top-k (FORCE's ``int(N * d)``); ``torch_floor``: max(1, floor(d·N)) by ``torch.topk`` (the
  official SynFlow code); ``kthvalue``: every score at or below the int(s·N)-th smallest is pruned, ties
  included (Synaptic-Flow's ``Pruner._global_mask``, kept by the NTK-SAP and PX codes).

The last round's mask is not chosen here: :func:`run_rounds` returns the last round's scores, arranged so
that ``compressors.select(scores, s, "global")`` (what the pipeline does with every criterion) picks the
final mask with the exact kept count of ``compressor.kept_count``; under ``keep_out`` the weights pruned in
earlier rounds get a score below every remaining one.

The score function receives a :class:`Round` (index k, the masks of the previous round as boolean views of
one flat buffer, the flat score buffer's views to write into) and returns one score tensor per name, so a
later criterion that needs the round index or the current masks (NTK-SAP, PX) is one more score function.
:class:`BatchStream` hands out fresh mask batches round after round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch

from compressors.estimators import flat_views
from compressors.masks import Scores, kept_count, sparsity_schedule, topk_mask, torch_topk_mask
from utils.progress import progress

SCHEDULES = ("exponential", "linear", "prune_fraction")
MASKINGS = ("remask", "keep_out", "intersect")
ROUND_RULES = ("exact", "floor", "torch_floor", "kthvalue")


def round_sparsities(sparsity: float, rounds: int, schedule: str = "exponential") -> list[float]:
    """The sparsity reached after each of the ``rounds`` rounds; the last is the target ``sparsity``.

    ``exponential``: 1 - d^(k/n) with d = 1 - s (Tanaka et al. 2020, Alg. 1; de Jorge et al. 2021, the
    ``mode='exp'`` schedule ``exp(-k log(1/d) / n)``); ``linear``: k·s/n, i.e. density 1 - k(1 - d)/n
    (de Jorge et al.'s ``mode='linear'``); ``prune_fraction``: s^(k/n) (the official second-order PaI code
    feeds the prune fraction into SynFlow's schedule: ~99.9% pruned in round one at s = 0.9)."""
    if schedule == "prune_fraction":
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"target sparsity must be in [0, 1), got {sparsity}")
        if rounds < 1:
            raise ValueError(f"the number of rounds must be >= 1, got {rounds}")
        return [sparsity ** ((k + 1) / rounds) for k in range(rounds)]
    if schedule not in SCHEDULES:
        raise ValueError(f"round schedule must be one of {SCHEDULES}, got {schedule!r}")
    return sparsity_schedule(sparsity, rounds, "geometric" if schedule == "exponential" else "equal")


def lineage_settings(rounds_select: str) -> tuple[str, str]:
    """(masking, rule) of :func:`run_rounds` for the criteria whose authors' code is Synaptic-Flow's prune loop
    (NTK-SAP, PX): ``"kthvalue"`` is that loop (re-mask the dense weights, prune at the k-th value, ties
    included), ``"exact"`` this project's (pruned weights stay out, exact counts)."""
    return ("remask", "kthvalue") if rounds_select == "kthvalue" else ("keep_out", "exact")


def round_mask(scores: torch.Tensor, sparsity: float, rule: str = "exact") -> torch.Tensor:
    """The boolean mask a round keeps out of the flat ``scores`` at ``sparsity`` under ``rule``."""
    n = scores.numel()
    if rule == "exact":
        return topk_mask(scores, kept_count(n, sparsity))
    if rule == "floor":
        return topk_mask(scores, int((1.0 - sparsity) * n))
    if rule == "torch_floor":
        return torch_topk_mask(scores, kept_count(n, sparsity, "floor"))
    if rule == "kthvalue":
        return kthvalue_mask(scores, sparsity)
    raise ValueError(f"round rule must be one of {ROUND_RULES}, got {rule!r}")


def kthvalue_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Synaptic-Flow's ``Pruner._global_mask`` (ganguli-lab/Synaptic-Flow ``Pruners/pruners.py``; the same
    function in YiteWang/NTK-SAP and iurada/px-ntk-pruning): with k = int(s·N), the threshold is the k-th
    smallest score and every score ``<=`` it is pruned, so ties with it are pruned too and fewer than
    N - k weights may be kept; k < 1 prunes nothing."""
    k = int(sparsity * scores.numel())
    if k < 1:
        return torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    threshold = torch.kthvalue(scores, k).values
    return scores > threshold


class NonFiniteScores(Exception):
    """Raised by a score function whose round gave a value that is not finite (e.g. SynFlow's R); the loop
    stops and reports ``finite=False`` (the criterion may retry in float64)."""


@dataclass
class Round:
    """What a score function gets for round ``index`` (1-based) of ``rounds``: ``sparsity`` is what this
    round's mask will reach, ``masks`` the masks the previous rounds left (boolean views of one flat
    buffer; all True in round one), ``out`` views of the flat score buffer a score function may write into
    (then it returns them)."""

    index: int
    rounds: int
    sparsity: float
    masks: Scores
    out: Scores


RoundScore = Callable[[Round], Scores]


@dataclass
class RoundsResult:
    """``scores``: the last round's (views of one flat buffer, in the loop's dtype), ranked so that
    ``select(scores, s, "global")`` gives the final mask; ``masks``: the masks the last round scored under;
    ``finite``: False when a round was not finite (the loop stopped there); ``revived``: how many times a
    weight pruned in an earlier round was kept again by a later one (0 unless ``masking="remask"``)."""

    scores: Scores
    masks: Scores
    finite: bool
    rounds_done: int
    revived: int


def _all_finite(flat: torch.Tensor) -> bool:
    """Are all entries finite?  Two reductions (NaN propagates into both), no copy of the buffer."""
    if flat.numel() == 0:
        return True
    lo, hi = torch.aminmax(flat)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def run_rounds(score_fn: RoundScore, shapes: dict[str, torch.Size], schedule: Sequence[float], *,
               masking: str = "remask", rule: str = "exact", dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu", desc: str = "pruning rounds") -> RoundsResult:
    """The rounds: for k = 1..n, ``score_fn(Round(k, ...))`` scores the network under the current masks;
    unless it is the last round, the masks then keep the top ``1 - schedule[k-1]`` of the weights, chosen
    under ``masking`` with the count ``rule`` (see the module docstring).  ``shapes`` gives the scored
    tensors in order (the flattened order of ``select``).  Scores are held in one flat buffer of ``dtype``
    on ``device``; a round whose scores are not finite (or that raises :class:`NonFiniteScores`) ends the
    loop with ``finite=False``."""
    if masking not in MASKINGS:
        raise ValueError(f"masking between rounds must be one of {MASKINGS}, got {masking!r}")
    if rule not in ROUND_RULES:
        raise ValueError(f"round rule must be one of {ROUND_RULES}, got {rule!r}")
    names, dims = list(shapes), list(shapes.values())
    total = sum(int(torch.Size(s).numel()) for s in dims)
    flat_mask = torch.ones(total, dtype=torch.bool, device=device)
    flat_scores = torch.empty(total, dtype=dtype, device=device)
    masks = dict(zip(names, flat_views(flat_mask, dims)))
    scores = dict(zip(names, flat_views(flat_scores, dims)))
    pruned = torch.zeros(total, dtype=torch.bool, device=device) if masking == "remask" else None
    revived, n = 0, len(schedule)
    for k, sparsity in progress(enumerate(schedule, 1), desc=desc, total=n, unit="round"):
        try:
            got = score_fn(Round(k, n, sparsity, masks, scores))
        except NonFiniteScores:
            return RoundsResult(scores, masks, False, k, revived)
        for name in names:
            if got[name] is not scores[name]:
                scores[name].copy_(got[name])
        if not _all_finite(flat_scores):
            return RoundsResult(scores, masks, False, k, revived)
        if k == n:
            break
        if masking == "remask":
            flat_mask.copy_(round_mask(flat_scores, sparsity, rule))
            revived += int(torch.count_nonzero(flat_mask & pruned))
            pruned |= ~flat_mask
        elif masking == "intersect":
            flat_mask.logical_and_(round_mask(flat_scores, sparsity, rule))
        else:  # keep_out: the pruned weights rank below every remaining one
            ranked = torch.where(flat_mask, flat_scores, torch.full_like(flat_scores, float("-inf")))
            flat_mask.copy_(round_mask(ranked, sparsity, rule))
    if masking == "keep_out" and not bool(flat_mask.all()):
        kept = flat_scores[flat_mask]
        lowest = float(kept.min()) if kept.numel() else 0.0
        flat_scores.masked_fill_(~flat_mask, lowest - max(1.0, abs(lowest)))
    return RoundsResult(scores, masks, True, n, revived)


class BatchStream:
    """Fresh mask batches round after round: ``take(b)`` returns the next ``b`` batches of ``loader``,
    starting a new pass over it whenever one ends (a reshuffling loader reshuffles; de Jorge et al. draw a
    new batch for every gradient), and ``take(None)`` one whole pass."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self._it: Iterator | None = None

    def take(self, count: int | None) -> list:
        if count is None:
            self._it = None
            batches = list(self.loader)
        else:
            batches, fresh = [], False
            while len(batches) < count:
                if self._it is None:
                    self._it, fresh = iter(self.loader), True
                try:
                    batches.append(next(self._it))
                    fresh = False
                except StopIteration:
                    self._it = None
                    if fresh:
                        break
        if not batches:
            raise ValueError("the mask loader yielded no batch: pass a loader of (inputs, targets) batches")
        return batches
