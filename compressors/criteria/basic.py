"""Data-free baselines: the dense model, random scores and weight magnitude."""

from __future__ import annotations

import torch

from compressors import register
from compressors.base import Compressor, Scores
from compressors.options import SeedOptions, estimator_generator


@register("none", "dense")
class NoPruning(Compressor):
    """Dense baseline: every weight scores 1 and nothing is pruned (the trainer skips masking)."""

    needs_data = False
    prunes = False

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        params = dict(model.named_parameters())
        return {n: torch.ones_like(params[n]) for n in names}


@register("random")
class RandomScores(Compressor):
    """Random pruning: scores ~ U(0, 1) i.i.d. per weight (seeded)."""

    Options = SeedOptions
    needs_data = False

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        params = dict(model.named_parameters())
        gen = estimator_generator(self.options.seed, torch.device("cpu"))
        return {n: torch.rand(params[n].shape, generator=gen) for n in names}


@register("magnitude")
class Magnitude(Compressor):
    """Magnitude pruning: score = |θ|."""

    needs_data = False

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        params = dict(model.named_parameters())
        return {n: params[n].detach().abs() for n in names}
