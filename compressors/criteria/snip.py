"""SNIP (Lee et al., 2019): connection sensitivity at initialisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

import torch

from compressors import register
from compressors.base import Compressor, Scores
from compressors.estimators import summed_gradient
from compressors.options import ChunkOptions
from utils.schema import option


def normalise_sum(raw: Scores) -> Scores:
    """Divide every score by the sum over all scored tensors (unchanged when that sum is 0)."""
    total = torch.stack([s.sum() for s in raw.values()]).sum() if raw else torch.zeros(())
    return {n: s / total for n, s in raw.items()} if total > 0 else raw


@dataclass
class SnipOptions(ChunkOptions):
    normalise_over: Optional[Literal["scored", "all"]] = option(
        None, "the sum that normalises the scores: over the scored weights, or over every parameter (BN, biases, "
              "classifier too; the official code); the ranking is the same; null: as general.compat says")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {"normalise_over": {"paper": "scored", "official": "all"}}


@register("snip")
class SNIP(Compressor):
    """SNIP: ``s = |θ ⊙ Σ_b g_b| / Σ |θ ⊙ Σ_b g_b|`` (normalised to sum 1 over all scored weights).

    ``Σ_b g_b`` is the gradient of the summed batch losses, computed in chunked passes of
    ``chunk_size`` samples (exact: each sample is weighted by 1/n_b of its own mask batch).  Option
    ``normalise_over: "all"`` (the official code) divides by the sum over every parameter instead.
    """

    Options = SnipOptions

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        params = dict(model.named_parameters())
        over = list(names) if self.options.normalise_over == "scored" else list(
            dict.fromkeys([n for n in params] + list(names)))
        grads = summed_gradient(model, over, mask_loader, loss_fn, chunk_size=self.options.chunk_size)
        raw = normalise_sum({n: (params[n].detach() * grads[n]).abs() for n in over})
        return {n: raw[n] for n in names}
