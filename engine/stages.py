"""The stages an experiment is declared from.  Each acts on a :class:`engine.run.Run`.

A stage is re-run from its start when a run resumes from a checkpoint taken before it, so every stage
is a deterministic function of the checkpointed state.  ``checkpoint_after`` says whether the engine
writes a checkpoint when the stage is done (stages that are expensive to redo: scoring, training);
:class:`Train` also writes one after every epoch, so it resumes inside itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from compressors import select_remaining, shuffle_within_layers
from engine.loop import bn_warmup
from engine.run import Run, state_to_cpu


class Stage:
    """Base class: ``run(run)`` does the stage's work; ``describe()`` names it in logs."""

    checkpoint_after: ClassVar[bool] = True

    def run(self, run: Run) -> None:  # pragma: no cover - abstract
        raise NotImplementedError("abstract: stages implement run()")

    def describe(self) -> str:
        return type(self).__name__.lower()


@dataclass
class Warmup(Stage):
    """``training.compressor.warmup`` BN-statistics passes over the training data (no weight changes);
    with ``compressor.warmup_mode: "flag"`` (the official code) one pass for any warmup > 0."""

    checkpoint_after: ClassVar[bool] = False

    def run(self, run: Run) -> None:
        comp = run.cfg.training.compressor
        passes = min(comp.warmup, 1) if comp.warmup_mode == "flag" else comp.warmup
        tic = time.perf_counter()
        if passes > 0:
            run.loaders.set_epoch(-1)
            bn_warmup(run.model, run.capped(run.loaders.train), passes, run.device)
        run.state.pruning["warmup_seconds"] += time.perf_counter() - tic


@dataclass
class Prune(Stage):
    """Score the remaining weights with the run's criterion (through the score cache) and keep the best
    ``1 - sparsity`` of all prunable weights, globally or per layer (``compressor.mask``); weights pruned
    before never come back.  The dense baseline (a criterion that prunes nothing) keeps every weight.
    ``compressor.ablation`` applies one of Frankle et al.'s sanity checks to this mask (invert / shuffle /
    reinit)."""

    sparsity: float
    seed: tuple[Any, ...] = ("scoring",)

    def run(self, run: Run) -> None:
        if not run.criterion.prunes:
            return
        scores = run.score(self.sparsity, self.seed)
        ablation = run.cfg.training.compressor.ablation
        if ablation == "invert":  # keep the lowest scores
            scores = {n: -s for n, s in scores.items()}
        if run.structures is not None:
            masks = self.structured(run, scores, ablation)
        else:
            comp = run.cfg.training.compressor
            masks = select_remaining(scores, run.masks, self.sparsity, comp.mask, kept=comp.kept_count)
            if ablation == "shuffle":
                masks = shuffle_within_layers(masks, run.ablation_generator())
        run.set_masks(masks)
        if ablation == "reinit":
            run.reinitialise_kept()
        run.verify_masks()
        run.folder.save_mask(run.masks)
        p = run.state.pruning
        run.log(f"  pruned with {run.criterion.name} to sparsity {1 - run.density():.4f} of "
                f"{sum(m.numel() for m in run.masks.values()):,} prunable weights (warmup {p['warmup_seconds']:.1f}s, "
                f"scoring {p['scoring_seconds']:.1f}s, score cache {p['score_cache']})")

    def structured(self, run: Run, scores: dict[str, torch.Tensor], ablation: str) -> dict[str, torch.Tensor]:
        """``compressor.structure``: remove the fraction ``sparsity`` of the structures (compressors.structures),
        their scores aggregated from the element scores; the masks reach every weight a removed structure
        owns (BN channels, biases, the next layers' input columns).  "shuffle" permutes the kept structures
        within each layer."""
        comp, structures = run.cfg.training.compressor, run.structures
        keep, record = structures.select(structures.structure_scores(scores, comp.aggregate, comp.structure_norm),
                                         self.sparsity, comp.mask)
        if ablation == "shuffle":
            keep = structures.shuffle(keep, run.ablation_generator())
        params = dict(run.model.named_parameters())
        masks = {**{n: torch.ones_like(m) for n, m in run.masks.items()}, **structures.masks(keep, params)}
        removed = int(sum(m.numel() - int(torch.count_nonzero(m)) for m in masks.values()))
        total = sum(p.numel() for p in params.values())
        record.update(aggregate=comp.aggregate, structure_norm=comp.structure_norm, removed_parameters=removed,
                      parameter_sparsity=removed / total if total else 0.0)
        run.state.pruning["structures"] = record
        run.log(f"  structured ({comp.structure}): kept {record['structures_kept']:,} of "
                f"{record['structures_total']:,} structures, {removed:,} of {total:,} parameters removed"
                + (f"; one structure kept in {len(record['rescued_layers'])} emptied layers"
                   if record["rescued_layers"] else ""))
        return masks

    def describe(self) -> str:
        return f"prune to sparsity {self.sparsity:g}"


@dataclass
class Train(Stage):
    """Train with the current mask until the run's training stream reaches epoch ``until`` (a float:
    ``0.25`` ends after a quarter of the first epoch's batches, rounded to whole batches).

    ``new_optimizer``: start a fresh optimizer and schedule over ``schedule_epochs`` epochs (default:
    this stage's whole epochs) at ``learning_rate`` (default: the config's); otherwise go on with the
    current ones.  Validation runs every ``validation.frequency`` epochs counted from epoch
    ``epochs_from`` (default: where the stage starts) and, with ``validate_last``, after its last epoch;
    ``track_best`` keeps the best-validation model.  ``label`` is the ``stage`` column of its history rows."""

    until: float
    new_optimizer: bool = True
    schedule_epochs: int | None = None
    learning_rate: float | None = None
    track_best: bool = False
    validate_last: bool = True
    epochs_from: int | None = None
    label: Any = None

    def run(self, run: Run) -> None:
        st, per_epoch = run.state, run.steps_per_epoch
        if st.train is None:  # starting (not resuming inside this stage)
            st.train = {"start": st.step, "end": max(st.step, round(self.until * per_epoch))}
            if self.new_optimizer or run.optimizer is None:
                epochs = self.schedule_epochs or -(-(st.train["end"] - st.step) // per_epoch)
                run.new_optimizer(epochs, self.learning_rate)
        end = st.train["end"]
        first_epoch = st.train["start"] // per_epoch if self.epochs_from is None else self.epochs_from
        freq = run.cfg.validation.frequency
        while st.step < end:
            epoch, offset = divmod(st.step, per_epoch)
            count = min(per_epoch - offset, end - st.step)
            run.train_batches(epoch, offset, count)
            if offset + count == per_epoch:
                last = st.step == end
                run.end_epoch(epoch, validate=(epoch + 1 - first_epoch) % freq == 0 or (last and self.validate_last),
                              track_best=self.track_best, label=self.label)
        st.train = None

    def describe(self) -> str:
        return f"train until epoch {self.until:g}"


@dataclass
class Snapshot(Stage):
    """Keep a copy of the whole model state under ``name`` (e.g. theta0, the rewind point)."""

    name: str
    checkpoint_after: ClassVar[bool] = False

    def run(self, run: Run) -> None:
        run.state.snapshots[self.name] = state_to_cpu(run.model.state_dict())


@torch.no_grad()
def rewind(model: nn.Module, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
           everything: bool = True) -> None:
    """Rewind ``model`` to ``state``: the masked tensors always, everything else (BN parameters and
    statistics, biases, unpruned layers) only with ``everything``; then zero the pruned weights."""
    params = dict(model.named_parameters())
    if everything:
        model.load_state_dict(state)
    else:
        for n in masks:
            params[n].copy_(state[n])
    for n, m in masks.items():
        params[n].mul_(m.to(params[n].device, params[n].dtype))


@dataclass
class Rewind(Stage):
    """Rewind the surviving weights to snapshot ``to`` (and, with ``everything``, all other state too)."""

    to: str
    everything: bool = True
    checkpoint_after: ClassVar[bool] = False

    def run(self, run: Run) -> None:
        snapshot = {k: v.to(run.device) for k, v in run.state.snapshots[self.to].items()}
        rewind(run.model, snapshot, run.masks, self.everything)


@dataclass
class Call(Stage):
    """An experiment's own step: ``fn(run)`` (e.g. record a row, collect features)."""

    fn: Callable[[Run], None]
    name: str = "call"
    checkpoint_after: ClassVar[bool] = False
    kwargs: dict[str, Any] = field(default_factory=dict)

    def run(self, run: Run) -> None:
        self.fn(run, **self.kwargs)

    def describe(self) -> str:
        return self.name
