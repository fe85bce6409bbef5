"""Option dataclasses shared by the criteria (validated like every config field).

Each criterion takes only the options it uses: ``chunk_size`` (every data-dependent criterion),
``temperature`` (grasp, hutch_diag, hutch_pruning, hts), ``probes`` and ``seed`` (Hutchinson; ``seed``
also for random), ``rounds`` (synflow).  Options that switch between the methods' papers and the official
second-order PaI code default to ``None`` and list their values per ``general.compat`` mode in ``COMPAT``
(:mod:`utils.compat`): the run specification fills them in, a criterion built directly gets the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

from utils.seeding import MAX_SEED
from utils.typed import option


@dataclass
class ChunkOptions:
    chunk_size: int = option(128, "mask samples per batched forward/backward pass (memory vs speed; the "
                                  "result does not depend on it)", min=1)


@dataclass
class SnipOptions(ChunkOptions):
    normalise_over: Optional[Literal["scored", "all"]] = option(
        None, "the sum that normalises the scores: over the scored weights, or over every parameter (BN, biases, "
              "classifier too; the official code); the ranking is the same; null: as general.compat says")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {"normalise_over": {"paper": "scored", "official": "all"}}


@dataclass
class GraspOptions(ChunkOptions):
    temperature: Optional[float] = option(None, "logits are divided by this temperature T in both GraSP passes; "
                                                "null: as general.compat says (paper 200, official 1)",
                                          min=0, min_exclusive=True)
    keep: Optional[Literal["lowest", "highest"]] = option(
        None, "which S = -θ ⊙ Hg are kept: 'lowest' (Wang et al. 2020 remove the largest S) or 'highest' (the "
              "official code); null: as general.compat says")
    wrt: Optional[Literal["weights", "all"]] = option(
        None, "what g, H and the normalising sum run over: 'weights' (every Conv/Linear weight, classifier "
              "included) or 'all' (every parameter: BN, biases too; the official code); null: as general.compat says")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {
        "temperature": {"paper": 200.0, "official": 1.0},
        "keep": {"paper": "lowest", "official": "highest"},
        "wrt": {"paper": "weights", "official": "all"},
    }


@dataclass
class HutchinsonOptions(ChunkOptions):
    probes: int = option(10, "Rademacher probes K per mask batch", min=1, max=100000)
    temperature: float = option(200.0, "logits are divided by this temperature T", min=0, min_exclusive=True)
    seed: Optional[int] = option(None, "the probes' own seed (default: drawn from torch's global RNG, which "
                                       "the trainer seeds from the run seed)", min=0, max=MAX_SEED)
    probe_params: Optional[Literal["scored", "all"]] = option(
        None, "the tensors the Rademacher probes z run over: 'scored' (the scored tensors) or 'all' (every "
              "parameter, BN and classifier too, as the official code; same expectation, other variance); null: as "
              "general.compat says")

    COMPAT: ClassVar[dict[str, dict[str, Any]]] = {"probe_params": {"paper": "scored", "official": "all"}}


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
