"""Pruning a run: score through the cache, choose the mask (unstructured or structured), apply the sanity
ablations, check that the ranks agree.  The :class:`engine.stages.Prune` stage is :func:`prune`.

Settings come in one typed object, :class:`PruneSettings` (the pruning fields of ``training.compressor``);
nothing here reads the config.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

import compressors
from compressors import kept_count, select_remaining, shuffle_within_layers
from compressors.cache import score_with_cache
from compressors.connectivity import effective_masks, effective_selection, with_min_density
from engine.run import Run
from runspec.config import CompressorConfig
from utils import distributed
from utils.seeding import derive_seed, seed_everything


@dataclass(frozen=True)
class PruneSettings:
    """How one pruning step chooses its mask (``training.compressor``: sparsity, mask, kept_count, ablation,
    structure, aggregate, structure_norm, reprune_disconnected, min_layer_density)."""

    sparsity: float
    mask: str = "global"            # one threshold over all scored weights, or one per tensor ("layer")
    kept_count: str = "round"       # "round" or the official "floor"
    ablation: str = "none"          # "none", "shuffle", "reinit", "invert"
    structure: str = "none"         # "none" or structure kinds such as "channel", "head+neuron"
    aggregate: str = "sum"          # structures: how element scores combine
    structure_norm: str = "none"    # structures: "layer" divides each group's scores by their absolute sum
    reprune_disconnected: bool = False        # re-fill the budget of disconnected weights (effective sparsity)
    min_layer_density: float | None = None    # every tensor keeps at least this fraction (global mask)

    @classmethod
    def of(cls, comp: CompressorConfig) -> PruneSettings:
        """The settings of a run's (resolved) compressor section."""
        return cls(sparsity=comp.sparsity, mask=comp.mask, kept_count=comp.kept_count or "round",
                   ablation=comp.ablation, structure=comp.structure, aggregate=comp.aggregate,
                   structure_norm=comp.structure_norm, reprune_disconnected=comp.reprune_disconnected,
                   min_layer_density=comp.min_layer_density)

    def at(self, sparsity: float) -> PruneSettings:
        """The same settings at another target sparsity (one step of a schedule)."""
        return dataclasses.replace(self, sparsity=sparsity)


def score(run: Run, sparsity: float, seed_parts: tuple[Any, ...] = ("scoring",)) -> compressors.ScoreMap:
    """Score the masked weights with the run's criterion through the score cache (every RNG seeded from the
    run seed and ``seed_parts`` first); the times, cache use and diagnostics go into the pruning record."""
    pruning = run.state.pruning
    run.log(f"  scoring {sum(m.numel() for m in run.masks.values()):,} weights with {run.criterion.name} on "
            f"{len(run.loaders.mask_indices)} mask samples ({len(run.loaders.mask)} batches)")
    run.beat("scoring")
    run.sync_buffers()
    seed_everything(derive_seed(run.seed, *seed_parts))
    tic = time.perf_counter()
    scores, info = score_with_cache(
        run.criterion, run.model, run.loaders.mask, torch.nn.CrossEntropyLoss(), names=run.scored,
        sparsity=sparsity if run.criterion.iterative else None, cache_dir=run.folder.cache_dir,
        mask_indices=run.loaders.mask_indices)
    pruning["scoring_seconds"] += time.perf_counter() - tic
    pruning.update(info, criterion_diagnostics=scores.diagnostics)
    if info["score_cache"] != "off":
        pruning["score_cache_hits" if info["score_cache"] == "hit" else "score_cache_misses"] += 1
    return scores


def prune(run: Run, settings: PruneSettings, seed_parts: tuple[Any, ...] = ("scoring",)) -> None:
    """Score the remaining weights and keep the best ``1 - sparsity`` of all scored weights, globally or per
    layer; weights pruned before never come back.  The dense baseline (a criterion that prunes nothing)
    keeps every weight.  ``settings.ablation`` applies one of Frankle et al.'s sanity checks to this mask
    (invert / shuffle / reinit).  The mask is checked to agree on every rank and saved."""
    if not run.criterion.prunes:
        return
    scores = score(run, settings.sparsity, seed_parts)
    if settings.ablation == "invert":  # keep the lowest scores
        scores = {n: -s for n, s in scores.items()}
    if run.structures is not None:
        masks = structured_masks(run, scores, settings)
    else:
        masks = unstructured_masks(run, scores, settings)
        if settings.ablation == "shuffle":
            masks = shuffle_within_layers(masks, ablation_generator(run))
    run.set_masks(masks)
    if settings.ablation == "reinit":
        reinitialise_kept(run)
    verify_masks(run)
    run.folder.save_mask(run.masks)
    p = run.state.pruning
    run.log(f"  pruned with {run.criterion.name} to sparsity {1 - run.density():.4f} of "
            f"{sum(m.numel() for m in run.masks.values()):,} prunable weights (warmup {p['warmup_seconds']:.1f}s, "
            f"scoring {p['scoring_seconds']:.1f}s, score cache {p['score_cache']})")


def unstructured_masks(run: Run, scores: dict[str, torch.Tensor], settings: PruneSettings) -> dict[str, torch.Tensor]:
    """The best-scored remaining weights at ``settings.sparsity`` (:func:`compressors.select_remaining`), then
    ``min_layer_density`` (:func:`compressors.connectivity.with_min_density`: every tensor keeps at least that
    fraction, the total unchanged), then ``reprune_disconnected``
    (:func:`compressors.connectivity.effective_selection`: Vysogorets & Kempe's binary search over the number
    of weights kept in score order, for the fewest whose *effective* count reaches the target count; the
    disconnected weights are removed).  The re-pruning record goes to ``results.json`` as
    ``effective_pruning``."""
    previous = run.masks

    def select_kept(k: int | None) -> dict[str, torch.Tensor]:
        n = sum(m.numel() for m in previous.values())
        sparsity = settings.sparsity if k is None else sparsity_for_kept(n, k, settings.kept_count)
        masks = select_remaining(scores, previous, sparsity, settings.mask, kept=settings.kept_count)
        if settings.min_layer_density is not None:
            masks = with_min_density(scores, masks, previous, settings.min_layer_density)
        return masks

    masks = select_kept(None)
    if not settings.reprune_disconnected:
        return masks
    target = int(sum(int(torch.count_nonzero(m)) for m in masks.values()))
    available = int(sum(int(torch.count_nonzero(m)) for m in previous.values()))
    tic = time.perf_counter()
    masks, record = effective_selection(select_kept, lambda m: effective_masks(run.model, m, run.loaders.input_shape),
                                        target, available)
    record["seconds"] = time.perf_counter() - tic
    run.state.extra["effective_pruning"] = record
    run.log(f"  re-pruned disconnected weights: {record['direct_kept']:,} kept in score order give "
            f"{record['effective_kept']:,} connected (target {record['target_kept']:,}"
            f"{'' if record['reached'] else ', not reachable'}; {record['probes']} probes, {record['seconds']:.1f}s)")
    return masks


def sparsity_for_kept(n: int, k: int, rule: str) -> float:
    """A sparsity at which :func:`compressors.kept_count` keeps exactly ``k`` of ``n`` under ``rule``."""
    for sparsity in (1.0 - k / n, 1.0 - (k + 0.5) / n):
        sparsity = min(max(sparsity, 0.0), 1.0 - 0.5 / n)
        if kept_count(n, sparsity, rule) == k:
            return sparsity
    raise ValueError(f"no sparsity keeps exactly {k} of {n} weights under the '{rule}' rule")


def structured_masks(run: Run, scores: dict[str, torch.Tensor], settings: PruneSettings) -> dict[str, torch.Tensor]:
    """``compressor.structure``: remove the fraction ``sparsity`` of the structures (compressors.structures),
    their scores aggregated from the element scores; the masks reach every weight a removed structure owns
    (BN channels, biases, the next layers' input columns).  "shuffle" permutes the kept structures within
    each layer."""
    structures = run.structures
    keep, record = structures.select(structures.structure_scores(scores, settings.aggregate, settings.structure_norm),
                                     settings.sparsity, settings.mask)
    if settings.ablation == "shuffle":
        keep = structures.shuffle(keep, ablation_generator(run))
    params = dict(run.model.named_parameters())
    masks = {**{n: torch.ones_like(m) for n, m in run.masks.items()}, **structures.masks(keep, params)}
    removed = int(sum(m.numel() - int(torch.count_nonzero(m)) for m in masks.values()))
    total = sum(p.numel() for p in params.values())
    record.update(aggregate=settings.aggregate, structure_norm=settings.structure_norm, removed_parameters=removed,
                  parameter_sparsity=removed / total if total else 0.0)
    run.state.pruning["structures"] = record
    run.log(f"  structured ({settings.structure}): kept {record['structures_kept']:,} of "
            f"{record['structures_total']:,} structures, {removed:,} of {total:,} parameters removed"
            + (f"; one structure kept in {len(record['rescued_layers'])} emptied layers"
               if record["rescued_layers"] else ""))
    return masks


def ablation_generator(run: Run) -> torch.Generator:
    """The ablations' own random stream, seeded from the run seed (the global RNG is left alone)."""
    return torch.Generator().manual_seed(derive_seed(run.seed, "ablation"))


@torch.no_grad()
def reinitialise_kept(run: Run) -> None:
    """The "reinit" ablation: the kept weights re-drawn from the initial distribution (a fresh network of the
    same architecture, :attr:`Run.make_model`, with its own seed), the mask unchanged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(run.seed, "ablation-reinit"))
        fresh = run.make_model()
    params, drawn = dict(run.model.named_parameters()), dict(fresh.named_parameters())
    for n, m in run.masks.items():
        params[n].copy_(drawn[n].to(params[n].device) * m.to(params[n].dtype))


def verify_masks(run: Run) -> None:
    """A distributed run's ranks scored the same network on the same data: their masks must agree."""
    if not distributed.same_on_every_rank(run.rank, list(run.masks.values()), run.device):
        raise RuntimeError(f"the {run.rank.world} ranks chose different masks (nondeterministic scoring?)")
    run.state.extra["masks_verified_on_ranks"] = run.rank.world
