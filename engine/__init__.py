"""The one pipeline engine: experiments are short declarations of stages over a shared training loop.

- :mod:`engine.experiment`: the :class:`Experiment` contract and :func:`execute`;
- :mod:`engine.assemble`: the composition root, a RunSpec -> the live :class:`Run` (nothing else builds it);
- :mod:`engine.run`: the run's objects and its checkpointed :class:`RunState`;
- :mod:`engine.stages`: Warmup, Prune, Train, Snapshot, Rewind, Call;
- :mod:`engine.pruning`: scoring through the cache, mask selection (structured too), ablations (PruneSettings);
- :mod:`engine.hooks`: the end of every epoch as an ordered list of hooks (divergence: ``TrainingDiverged``);
- :mod:`engine.checkpoint`: the checkpoint format, saving and resuming a run, damaged files;
- :mod:`engine.finish`: testing, costs and ``results.json``; :mod:`engine.trackers`: TensorBoard, W&B, MLflow;
- :mod:`engine.loop`: one training pass, evaluation, mask enforcement, mixed precision, BN warmup.
"""

from __future__ import annotations

from engine.assemble import assemble
from engine.experiment import Experiment, execute
from engine.hooks import EpochEnd, default_hooks
from engine.loop import TrainingDiverged
from engine.pruning import PruneSettings
from engine.run import LoopSettings, Run, RunState
from engine.stages import Call, Prune, Rewind, Snapshot, Stage, Train, Warmup, rewind

__all__ = ["Experiment", "execute", "assemble", "Run", "RunState", "LoopSettings", "PruneSettings", "EpochEnd",
           "default_hooks", "TrainingDiverged", "Stage", "Warmup", "Prune", "Train", "Snapshot", "Rewind", "Call",
           "rewind"]
