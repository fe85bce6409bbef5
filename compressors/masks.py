"""Scores -> binary masks.  One function for every criterion: global or per-layer exact top-k.

``select`` keeps exactly ``round((1 - sparsity) * N)`` entries (N = all scored entries for ``global``,
each tensor's size for ``layer``).  Ties are broken deterministically by position (the flattened
order of ``scores`` as given), never by the sort algorithm.  NaN scores rank lowest.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Scores = dict[str, torch.Tensor]  # parameter name -> one value per element (scores or masks); the one alias


KEPT_RULES = ("round", "floor")


def kept_count(n: int, sparsity: float, rule: str = "round") -> int:
    """Number of entries kept out of ``n`` at ``sparsity``: ``round((1 - sparsity) * n)``; with
    ``rule="floor"`` the official second-order PaI code's ``max(1, int((1 - sparsity) * n))``."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if rule == "floor":
        return max(1, int((1.0 - sparsity) * n))
    if rule != "round":
        raise ValueError(f"kept-count rule must be one of {KEPT_RULES}, got {rule!r}")
    return int(round((1.0 - sparsity) * n))


def torch_topk_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` entries ``torch.topk(flat, k, sorted=False)`` returns: the official code's
    selection, whose choice among tied scores is the kernel's, not the position's."""
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[torch.topk(flat, min(k, flat.numel()), largest=True, sorted=False).indices] = True
    return mask


SMALL_SELECT = 1 << 20  # below this many entries, torch.kthvalue on everything is fast enough
SAMPLE_SIZE = 1 << 16


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The exact k-th largest entry of the 1-D, NaN-free ``values`` (1 <= k <= n), in about four passes.

    ``torch.kthvalue`` over 11M float32 entries takes ~160 ms on a 2-core CPU.  Here a strided sample
    (every (n // 2^16)-th entry: a stratified sample over the concatenated tensors) brackets the answer
    between two sample values ``lo <= hi`` chosen 4 standard deviations of the sample rank around the
    target; one pass counts the entries above ``hi``, one gathers those in ``[lo, hi]``, and
    ``kthvalue`` runs on those few.  If the bracket misses (the count says so), it falls back to
    ``kthvalue`` on everything: the result is always exact, only the time depends on the sample."""
    n = values.numel()
    if n <= SMALL_SELECT:
        return torch.kthvalue(values, n - k + 1).values
    sample = torch.sort(values[:: n // SAMPLE_SIZE], descending=True).values
    m = sample.numel()
    rank = k * m / n  # where the k-th largest falls in the sample
    margin = 4.0 * (m * (k / n) * (1.0 - k / n)) ** 0.5 + 2.0
    hi = sample[max(0, int(rank - margin))]
    lo = sample[min(m - 1, int(rank + margin))]
    above = int(torch.count_nonzero(values > hi))  # count_nonzero: ~30x faster than bool .sum() on CPU
    if above < k:
        between = values[(values <= hi) & (values >= lo)]
        r = k - above  # the answer is the r-th largest of ``between``
        if between.numel() >= r:
            return torch.kthvalue(between, between.numel() - r + 1).values
    return torch.kthvalue(values, n - k + 1).values


def topk_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask keeping the k largest entries of ``flat``; ties go to the lower index."""
    n = flat.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask
    if k >= n:
        return ~mask
    # float32/float64 keep their order exactly (float64 holds every float32), so no up-cast is needed
    values = flat if flat.dtype in (torch.float32, torch.float64) else flat.double()
    # NaN ranks lowest.  A NaN-free sum (one reduction) proves there is none, sparing a copy in the usual
    # case; a NaN sum (a NaN, or inf - inf) takes the exact path.
    if bool(torch.isnan(values.sum())):
        values = torch.where(torch.isnan(values), float("-inf"), values)
    # Same result as a stable descending sort keeping the first k (lower index first among equal
    # scores), in O(n): the k-th largest value is the threshold; everything above it is kept, and the
    # ties at the threshold are taken in index order until k are kept.
    threshold = kth_largest(values, k)
    keep = values >= threshold
    if int(torch.count_nonzero(keep)) == k:  # the usual case: no tie to break
        return keep
    above = values > threshold
    tied = keep & ~above
    need = k - int(torch.count_nonzero(above))
    return above | (tied & (torch.cumsum(tied, 0) <= need))


def check_scores(scores: Scores, criterion: str) -> None:
    """Raise a ValueError naming the tensors when any score is NaN or infinite: a mask chosen from such
    scores would follow the index order, not the criterion."""
    bad = {n: s for n, s in scores.items() if not bool(torch.isfinite(s).all())}
    if bad:
        counts = ", ".join(f"{n} ({int(torch.isnan(s).sum())} NaN, {int(torch.isinf(s).sum())} infinite of "
                           f"{s.numel()})" for n, s in list(bad.items())[:5])
        raise ValueError(f"criterion '{criterion}' gave scores that are not finite in {len(bad)} of {len(scores)} "
                         f"tensors: {counts}; no mask is chosen from them (check the criterion's options, e.g. "
                         "its temperature)")


def check_masks(masks: Scores, where: str) -> None:
    """Raise a ValueError unless every mask is binary (bool, or only 0 and 1): ``where`` names their file."""
    for n, m in masks.items():
        if not isinstance(m, torch.Tensor):
            raise ValueError(f"{where}: the mask of {n} is a {type(m).__name__}, not a tensor")
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"{where}: the mask of {n} holds values other than 0 and 1")


def select(scores: Scores, sparsity: float, scope: Literal["global", "layer"] = "global",
           kept: Literal["round", "floor"] = "round") -> Scores:
    """Keep the top (1 - sparsity) fraction of the scores: ``{name: 0/1 float tensor}``.

    ``global``: one threshold over all tensors together; ``layer``: the same fraction of every tensor.
    ``kept="round"`` (default): exactly :func:`kept_count` entries, ties to the lower index;
    ``kept="floor"``: the official code's ``max(1, floor((1 - s) n))`` entries chosen by ``torch.topk``
    over the concatenation in the order of ``scores`` (its tie order is the kernel's).
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if kept not in KEPT_RULES:
        raise ValueError(f"kept must be one of {KEPT_RULES}, got {kept!r}")
    if not scores:
        return {}
    pick = topk_mask if kept == "round" else torch_topk_mask
    if scope == "layer":
        return {
            name: pick(s.reshape(-1), kept_count(s.numel(), sparsity, kept)).reshape(s.shape).float()
            for name, s in scores.items()
        }
    names = list(scores)
    device = next(iter(scores.values())).device
    dtype = torch.float64 if any(scores[n].dtype != torch.float32 for n in names) else torch.float32
    flat = torch.cat([scores[n].reshape(-1).to(device, dtype) for n in names])
    keep = pick(flat, kept_count(flat.numel(), sparsity, kept))
    masks, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = keep[offset:offset + size].reshape(scores[n].shape).float()
        offset += size
    return masks


def select_remaining(scores: Scores, masks: Scores, sparsity: float,
                     scope: Literal["global", "layer"] = "global", kept: Literal["round", "floor"] = "round") -> Scores:
    """Masks at ``sparsity`` keeping the best-scored *remaining* weights (iterative pruning): weights
    already pruned in ``masks`` rank below every remaining one, so they never come back and the new masks
    are subsets of ``masks``.  With nothing pruned yet this is :func:`select` exactly (``kept``: its rule)."""
    if all(bool(m.all()) for m in masks.values()):
        return {n: m.to(masks[n].device, masks[n].dtype) for n, m in select(scores, sparsity, scope, kept).items()}
    top = torch.finfo(torch.float64).max
    ranked = {}
    for n, s in scores.items():
        s = torch.nan_to_num(s.detach().double(), nan=-top, posinf=top, neginf=-top)
        ranked[n] = torch.where(masks[n].to(s.device).bool(), s, torch.full_like(s, float("-inf")))
    new = select(ranked, sparsity, scope, kept)
    return {n: (new[n].to(masks[n].device) * masks[n]).to(masks[n].dtype) for n in masks}


def sparsity_schedule(target_sparsity: float, steps: int, schedule: str = "geometric") -> list[float]:
    """Sparsity after each of ``steps`` pruning steps; the last is exactly the target.

    ``geometric``: density d^(i/n) after step i, d = 1 - target (SynFlow's rounds, Tanaka et al. 2020;
    lottery-ticket IRP); ``equal``: sparsity target * i / n (the same number of weights removed each step)."""
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    if steps < 1:
        raise ValueError(f"the number of pruning steps must be >= 1, got {steps}")
    if schedule not in ("geometric", "equal"):
        raise ValueError(f"schedule must be 'geometric' or 'equal', got {schedule!r}")
    d = 1.0 - target_sparsity
    out = [1.0 - d ** (i / steps) if schedule == "geometric" else target_sparsity * i / steps
           for i in range(1, steps)]
    return out + [target_sparsity]


def shuffle_within_layers(masks: Scores, generator: torch.Generator) -> Scores:
    """Each mask with its entries permuted at random: the same kept count per tensor, anywhere in it
    (the "layerwise shuffle" ablation of Frankle et al., ICLR 2021)."""
    out = {}
    for n, m in masks.items():
        perm = torch.randperm(m.numel(), generator=generator).to(m.device)
        out[n] = m.reshape(-1)[perm].reshape(m.shape)
    return out


def density(masks: Scores) -> dict[str, float]:
    """Fraction of kept weights per tensor."""
    return {n: float(m.sum().item()) / max(m.numel(), 1) for n, m in masks.items()}


def global_sparsity(masks: Scores) -> float:
    total = sum(m.numel() for m in masks.values())
    kept = sum(float(m.sum().item()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def collapsed_layers(masks: Scores) -> list[str]:
    """Tensors left with no weight at all (layer collapse)."""
    return [n for n, m in masks.items() if m.numel() > 0 and not bool(m.any())]


def mask_summary(masks: Scores, total_parameters: int) -> dict[str, Any]:
    """What every run records about its mask: prunable / kept counts, achieved sparsity over the prunable
    weights and over all ``total_parameters`` of the model, density per tensor, collapsed tensors."""
    prunable = sum(m.numel() for m in masks.values())
    kept = int(sum(int(torch.count_nonzero(m)) for m in masks.values()))
    return {
        "prunable_parameters": prunable,
        "kept_parameters": kept,
        "achieved_sparsity": global_sparsity(masks),
        "total_parameters": total_parameters,
        "overall_sparsity": (prunable - kept) / total_parameters if total_parameters else 0.0,
        "layer_density": density(masks),
        "layer_collapse": collapsed_layers(masks),
    }
