"""Option dataclasses shared by the criteria (validated like every config field).

Each criterion takes only the options it uses: ``chunk_size`` (every data-dependent criterion),
``temperature`` (grasp, hutch_diag, hutch_pruning, hts), ``probes`` and ``seed`` (Hutchinson; ``seed``
also for random), ``rounds`` (synflow).  Options that switch between the methods' papers and the official
second-order PaI code default to ``None`` and list their values per ``general.compat`` mode in ``COMPAT``
(:mod:`utils.switches`): the run specification fills them in, a criterion built directly gets the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from utils.schema import option
from utils.seeding import MAX_SEED


@dataclass
class ChunkOptions:
    chunk_size: int = option(128, "mask samples per batched forward/backward pass (memory vs speed; the "
                                  "result does not depend on it)", min=1)


@dataclass
class SeedOptions:
    seed: Optional[int] = option(None, "the estimator's own seed (default: drawn from torch's global RNG, "
                                       "which the trainer seeds from the run seed)", min=0, max=MAX_SEED)


def estimator_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator for a stochastic criterion: its own seed, or one drawn from the global torch RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator(device=device).manual_seed(seed)
