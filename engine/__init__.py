"""The one pipeline engine: experiments are short declarations of stages over a shared training loop.

- :mod:`engine.experiment`: the :class:`Experiment` contract and :func:`execute`;
- :mod:`engine.stages`: Warmup, Prune, Train, Snapshot, Rewind, Call;
- :mod:`engine.run`: the live run and its checkpointed state; :mod:`engine.checkpoint`: the format;
- :mod:`engine.loop`: one training pass, evaluation, mask enforcement, mixed precision, BN warmup.
"""

from __future__ import annotations

from engine.experiment import Experiment, execute
from engine.run import Run, RunState
from engine.stages import Call, Prune, Rewind, Snapshot, Stage, Train, Warmup, rewind

__all__ = ["Experiment", "execute", "Run", "RunState", "Stage", "Warmup", "Prune", "Train", "Snapshot", "Rewind",
           "Call", "rewind"]
