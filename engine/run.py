"""A run in progress: what the stages of an experiment act on.

:class:`Run` holds the live objects of one run, put together by :func:`engine.assemble.assemble` (loaders,
model, criterion, loss, optimizer factory, scaler, structures, masks), the current optimizer and schedule,
the end-of-epoch hooks (:mod:`engine.hooks`) and a :class:`RunState` with everything else a resumed run needs
(position in the batch stream, history, records, best model, snapshots, pruning record).  The state, the
tensors and every RNG state go into one checkpoint (:mod:`engine.checkpoint`).  What acts on a run lives
beside it: pruning (:mod:`engine.pruning`), the stages (:mod:`engine.stages`), the results (:mod:`engine.finish`).

The training stream is a sequence of steps: step ``k`` is batch ``k mod E`` of data epoch ``k div E``
(``E`` batches per epoch, each epoch's order and augmentation seeded by (seed, epoch)), so a stage may
end inside an epoch and the next one goes on from the following batch.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch
from torch import nn

import compressors
import data
from compressors.structures import StructureSet
from engine.loop import MaskEnforcer, evaluate
from runspec import RunSpec
from runspec.folder import Files, Heartbeat, PruningRecord, RunFolder
from utils import distributed


@dataclass
class RunState:
    """What a run has done so far (all of it checkpointed)."""

    stage: int = 0                                     # index of the current stage
    step: int = 0                                      # training steps taken
    train: dict[str, int] | None = None                # the Train stage in progress: {"start", "end"} steps
    optimizer: dict[str, Any] | None = None            # how the current optimizer was built: {"lr", "epochs"}
    partial: dict[str, float] = field(default_factory=dict)  # sums over the current epoch's batches so far
    history: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    best_model: dict[str, torch.Tensor] | None = None
    pruning: dict[str, Any] = field(default_factory=lambda: vars(PruningRecord()))
    snapshots: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # an experiment's own values (tensors welcome)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def state_to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


@dataclass(frozen=True)
class LoopSettings:
    """How the run trains and evaluates (``training.*`` and ``validation.*``)."""

    grad_clip: float | None = None
    max_batches: int | None = None    # smoke runs: every pass over a loader capped at this many batches
    amp: str = "none"
    channels_last: bool = False
    metric: str = "acc"               # the validation metric that picks the best model
    frequency: int = 1                # validate every this many epochs


class Capped:
    """The first ``limit`` batches of every pass over ``loader``."""

    def __init__(self, loader: Any, limit: int) -> None:
        self.loader, self.limit = loader, limit

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.limit)

    def __len__(self) -> int:
        return min(len(self.loader), self.limit)


@dataclass(eq=False)
class Run:
    """The live objects and the state of one run (see the module docstring); built by ``assemble``."""

    spec: RunSpec                      # identity (hash) and resolved config: checkpoints, trackers, records
    folder: RunFolder                  # rank 0's run folder; a quiet one on the other ranks
    rank: distributed.Rank
    device: torch.device
    log: Callable[[str], None]
    seed: int                          # the run seed (scoring and ablation seeds derive from it)
    loaders: data.Loaders
    num_classes: int
    model: nn.Module                   # plain state_dict keys
    train_model: nn.Module             # what the loop calls: the model, maybe compiled, maybe DDP
    loss_fn: nn.Module
    criterion: compressors.Compressor
    scaler: torch.amp.GradScaler | None
    settings: LoopSettings
    structures: StructureSet | None    # compressor.structure: the model's structures
    scored: list[str]                  # the parameters the criterion scores
    steps_per_epoch: int
    make_model: Callable[[], nn.Module]  # a fresh network of the run's architecture (the reinit ablation)
    make_optimizer: Callable[[nn.Module, float | None], torch.optim.Optimizer]
    make_schedule: Callable[[torch.optim.Optimizer, int], Any]
    hooks: list[Callable[..., None]] = field(default_factory=list)  # end of every epoch (engine.hooks)
    state: RunState = field(default_factory=RunState)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    enforcer: MaskEnforcer | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    trackers: list[Any] = field(default_factory=list)
    total_epochs: int = 0              # set by the engine from the experiment's stages

    @property
    def loop_options(self) -> dict[str, Any]:
        return {"amp": self.settings.amp, "channels_last": self.settings.channels_last}

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Use ``masks`` from now on: pruned weights are zeroed and kept at zero by the loop."""
        self.masks = {n: m.to(self.device) for n, m in masks.items()}
        pruned = self.criterion.prunes and any(not bool(m.all()) for m in self.masks.values())
        self.enforcer = MaskEnforcer(self.model, self.masks if pruned else {})
        self.enforcer.apply_to_weights()

    def density(self) -> float:
        return 1.0 - compressors.global_sparsity({n: self.masks[n] for n in self.scored})

    def capped(self, loader: Any) -> Any:
        """``loader``, or its first ``training.max_batches`` batches in every pass (smoke runs)."""
        cap = self.settings.max_batches
        return loader if cap is None else Capped(loader, cap)

    def evaluate(self, loader: Any, model: nn.Module | None = None, **options: Any) -> dict[str, float]:
        return evaluate(model or self.train_model, self.capped(loader), self.loss_fn, self.device, self.num_classes,
                        **options)

    def test(self) -> dict[str, float]:
        return self.evaluate(self.loaders.test, **self.loop_options)

    def new_optimizer(self, epochs: int, learning_rate: float | None = None) -> None:
        """A fresh optimizer and per-epoch schedule over ``epochs`` epochs (``learning_rate``: else the config's)."""
        self.state.optimizer = {"lr": learning_rate, "epochs": epochs}
        self.optimizer = self.make_optimizer(self.model, learning_rate)
        self.scheduler = self.make_schedule(self.optimizer, max(epochs, 1))

    def sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BN statistics drift apart in the local training batches)."""
        if self.rank.distributed:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)

    def beat(self, phase: str) -> None:
        """Rewrite ``heartbeat.json`` (see :class:`runspec.folder.Heartbeat`)."""
        history = self.state.history
        seconds = sum(r["epoch_seconds"] for r in history) / len(history) if history else 0.0
        self.folder.write(Files.HEARTBEAT, vars(Heartbeat(
            phase=phase, epoch=self.state.step // self.steps_per_epoch, step=self.state.step,
            total_epochs=self.total_epochs, epoch_seconds=seconds, host=socket.gethostname(), pid=os.getpid(),
            time=time.time())))

    def record(self, row: dict[str, Any]) -> None:
        """Append an experiment record (``iterations.json`` / ``.csv``)."""
        self.state.records.append(row)
        self.folder.write_rows(Files.RECORDS, Files.RECORDS_CSV, self.state.records)
