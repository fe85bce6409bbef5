"""The stages an experiment is declared from.  Each acts on a :class:`engine.run.Run` and takes its settings
as arguments (none reads the config): ``Warmup(passes, mode)``, ``Prune(PruneSettings)``, ``Train(until, ...)``,
``Snapshot``, ``Rewind``, ``Call``.

A stage is re-run from its start when a run resumes from a checkpoint taken before it, so every stage
is a deterministic function of the checkpointed state.  ``checkpoint_after`` says whether the engine
writes a checkpoint when the stage is done (stages that are expensive to redo: scoring, training);
:class:`Train` also writes one after every epoch, so it resumes inside itself.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from engine.hooks import end_epoch
from engine.loop import bn_warmup, train_epoch
from engine.pruning import PruneSettings, prune
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
    """``passes`` BN-statistics passes over the training data (no weight changes; ``compressor.warmup``);
    with ``mode="flag"`` (``compressor.warmup_mode``, the official code) one pass for any ``passes`` > 0."""

    passes: int
    mode: str = "passes"
    checkpoint_after: ClassVar[bool] = False

    def run(self, run: Run) -> None:
        passes = min(self.passes, 1) if self.mode == "flag" else self.passes
        tic = time.perf_counter()
        if passes > 0:
            run.loaders.set_epoch(-1)
            bn_warmup(run.model, run.capped(run.loaders.train), passes, run.device)
        run.state.pruning["warmup_seconds"] += time.perf_counter() - tic


@dataclass
class Prune(Stage):
    """Score the remaining weights with the run's criterion (through the score cache) and keep the best
    ``1 - settings.sparsity`` of all prunable weights, globally or per layer; weights pruned before never come
    back; ``settings.ablation`` applies a sanity check to this mask (:func:`engine.pruning.prune`).  ``seed``:
    the parts the scoring seed derives from, with the run seed."""

    settings: PruneSettings
    seed: tuple[Any, ...] = ("scoring",)

    def __post_init__(self) -> None:
        if not isinstance(self.settings, PruneSettings):
            raise TypeError(f"Prune takes PruneSettings, got {self.settings!r}: e.g. Prune(PruneSettings.of("
                            "self.cfg.training.compressor)), and .at(sparsity) for another target")

    def run(self, run: Run) -> None:
        prune(run, self.settings, self.seed)

    def describe(self) -> str:
        return f"prune to sparsity {self.settings.sparsity:g}"


@dataclass
class Train(Stage):
    """Train with the current mask until the run's training stream reaches epoch ``until`` (a float:
    ``0.25`` ends after a quarter of the first epoch's batches, rounded to whole batches).

    ``new_optimizer``: start a fresh optimizer and schedule over ``schedule_epochs`` epochs (default:
    this stage's whole epochs) at ``learning_rate`` (default: the config's); otherwise go on with the
    current ones.  Validation runs every ``validation.frequency`` epochs counted from epoch
    ``epochs_from`` (default: where the stage starts) and, with ``validate_last``, after its last epoch;
    ``track_best`` keeps the best-validation model.  ``label`` is the ``stage`` column of its history rows.
    After every epoch the run's hooks run (:func:`engine.hooks.end_epoch`: validation, history, checkpoint ...)."""

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
        freq = run.settings.frequency
        while st.step < end:
            epoch, offset = divmod(st.step, per_epoch)
            count = min(per_epoch - offset, end - st.step)
            train_batches(run, epoch, offset, count, last_epoch=-(-end // per_epoch))
            if offset + count == per_epoch:
                last = st.step == end
                end_epoch(run, epoch, validate=(epoch + 1 - first_epoch) % freq == 0 or (last and self.validate_last),
                          track_best=self.track_best, label=self.label)
        st.train = None

    def describe(self) -> str:
        return f"train until epoch {self.until:g}"


def train_batches(run: Run, epoch: int, offset: int, count: int, last_epoch: int) -> None:
    """Train on batches ``offset .. offset + count - 1`` of data epoch ``epoch`` (of a stage ending in epoch
    ``last_epoch``), adding to the epoch's running sums."""
    partial = run.state.partial
    if not partial:
        partial.update(lr=run.optimizer.param_groups[0]["lr"], loss=0.0, correct=0.0, samples=0, seconds=0.0)
    run.loaders.set_epoch(epoch, start_batch=offset)
    batches = itertools.islice(run.loaders.train, count)
    stats = train_epoch(run.train_model, batches, run.loss_fn, run.optimizer, run.device, run.enforcer,
                        run.settings.grad_clip, desc=f"epoch {epoch + 1}/{last_epoch}", scaler=run.scaler,
                        total=count, **run.loop_options)
    partial["loss"] += stats.loss * stats.samples
    partial["correct"] += stats.acc * stats.samples
    partial["samples"] += stats.samples
    partial["seconds"] += stats.seconds
    run.state.step += count


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
