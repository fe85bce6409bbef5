"""Layer-density baselines: a density for every prunable tensor, random weights inside each.

- ``uniform``: the same density ``1 - s`` in every tensor;
- ``erk``: Erdős–Rényi-Kernel (Evci et al. 2020, "Rigging the Lottery", Sec. 3): the density of a tensor
  of shape ``(n_out, n_in, k_h, k_w)`` is proportional to ``(n_out + n_in + k_h + k_w) / (n_out·n_in·k_h·k_w)``
  (for a Linear layer ``(n_out + n_in) / (n_out·n_in)``), scaled so that the whole network keeps ``1 - s``;
  a tensor whose density would exceed 1 is kept dense and the excess is redistributed over the others.

Kept counts are exact: the per-tensor counts add up to the global count of :func:`compressors.select`
(largest remainders, ties to the earlier tensor).  The returned scores are the masks themselves (1 kept,
0 pruned), so the global top-k keeps exactly them; a per-layer top-k would not, so these criteria accept
``compressor.mask: "global"`` only.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch

from compressors import register
from compressors.base import Compressor, ScoreMap
from compressors.masks import kept_count, topk_mask
from compressors.options import SeedOptions, estimator_generator


def layer_kept_counts(sizes: Sequence[int], raw: Sequence[float], sparsity: float) -> list[int]:
    """Kept entries per tensor for densities proportional to ``raw`` (capped at 1, the excess
    redistributed), adding up exactly to ``kept_count(sum(sizes), sparsity)``."""
    budget = kept_count(sum(sizes), sparsity)
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(sizes)) if i not in dense]
        left = budget - sum(sizes[i] for i in dense)
        weight = sum(raw[i] * sizes[i] for i in free)
        scale = left / weight if weight > 0 else 0.0
        over = {i for i in free if scale * raw[i] >= 1.0}
        if not over:
            break
        dense |= over
    exact = [float(sizes[i]) if i in dense else scale * raw[i] * sizes[i] for i in range(len(sizes))]
    counts = [min(math.floor(e), s) for e, s in zip(exact, sizes)]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:budget - sum(counts)]:
        counts[i] += 1
    return counts


class _LayerDensity(Compressor):
    """Base: ``raw_density(shape)`` gives a tensor's unscaled density; weights inside it are random."""

    Options = SeedOptions
    needs_data = False
    iterative = True
    scopes: ClassVar[tuple[str, ...]] = ("global",)

    def raw_density(self, shape: torch.Size) -> float:  # pragma: no cover - abstract
        raise NotImplementedError("abstract: layer-density baselines implement raw_density()")

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> ScoreMap:
        params = dict(model.named_parameters())
        shapes = [params[n].shape for n in names]
        counts = layer_kept_counts([math.prod(s) for s in shapes], [self.raw_density(s) for s in shapes], sparsity)
        gen = estimator_generator(self.options.seed, torch.device("cpu"))
        scores = {n: topk_mask(torch.rand(math.prod(s), generator=gen), c).reshape(s).float()
                  for n, s, c in zip(names, shapes, counts)}
        return ScoreMap(scores, {"layer_density": {n: c / math.prod(s) for n, s, c in zip(names, shapes, counts)}})


@register("uniform")
class Uniform(_LayerDensity):
    """Uniform layer density: every prunable tensor keeps ``1 - s`` of its weights, chosen at random."""

    def raw_density(self, shape: torch.Size) -> float:
        return 1.0


@register("erk")
class ERK(_LayerDensity):
    """Erdős–Rényi-Kernel densities ``∝ Σ dims / Π dims`` (Evci et al. 2020), random weights inside."""

    def raw_density(self, shape: torch.Size) -> float:
        return sum(shape) / math.prod(shape)
