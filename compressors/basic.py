"""Data-free baselines: the dense model, random scores and weight magnitude."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from compressors import register
from compressors.base import Compressor, Scores
from utils.seeding import MAX_SEED
from utils.typed import option


@register("none", "dense")
class NoPruning(Compressor):
    """Dense baseline: every weight scores 1 and nothing is pruned (the trainer skips masking)."""

    needs_data = False
    prunes = False

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        params = dict(model.named_parameters())
        return {n: torch.ones_like(params[n]) for n in names}


@dataclass
class SeedOptions:
    seed: Optional[int] = option(None, "the estimator's own seed (default: drawn from torch's global RNG, "
                                       "which the trainer seeds from the run seed)", min=0, max=MAX_SEED)


def estimator_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator for a stochastic criterion: its own seed, or one drawn from the global torch RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator(device=device).manual_seed(seed)


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
