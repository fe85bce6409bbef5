"""Option dataclasses shared by the criteria (validated like every config field).

Each criterion takes only the options it uses: ``chunk_size`` (every data-dependent criterion),
``temperature`` (grasp, hutch_diag, hutch_pruning, hts), ``probes`` and ``seed`` (Hutchinson; ``seed``
also for random), ``rounds`` (synflow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from utils.seeding import MAX_SEED
from utils.typed import option


@dataclass
class ChunkOptions:
    chunk_size: int = option(128, "mask samples per batched forward/backward pass (memory vs speed; the "
                                  "result does not depend on it)", min=1)


@dataclass
class GraspOptions(ChunkOptions):
    temperature: float = option(200.0, "logits are divided by this temperature T in both GraSP passes",
                                min=0, min_exclusive=True)


@dataclass
class HutchinsonOptions(ChunkOptions):
    probes: int = option(10, "Rademacher probes K per mask batch", min=1, max=100000)
    temperature: float = option(200.0, "logits are divided by this temperature T", min=0, min_exclusive=True)
    seed: Optional[int] = option(None, "the probes' own seed (default: drawn from torch's global RNG, which "
                                       "the trainer seeds from the run seed)", min=0, max=MAX_SEED)


@dataclass
class SynFlowOptions:
    rounds: int = option(100, "pruning rounds n; round k keeps d^(k/n) of the weights (d = 1 - sparsity)",
                         min=1, max=100000)
