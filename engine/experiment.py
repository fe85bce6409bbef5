"""The experiment contract and the one engine that runs every experiment.

An experiment is one registered class in ``trainers/`` that declares its options and its stages::

    @register("pbt")
    class PruneBeforeTraining(Experiment):
        def stages(self, run):
            comp = self.cfg.training.compressor
            return [Warmup(comp.warmup, comp.warmup_mode), Prune(PruneSettings.of(comp)),
                    Train(until=self.cfg.training.num_steps, track_best=True)]

:func:`execute` puts the run together (:func:`engine.assemble.assemble`), resumes it from its checkpoint
when there is one, runs the remaining stages (checkpointing after the expensive ones and, through the
end-of-epoch hooks, after every epoch) and tests the result (:func:`engine.finish.finish`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

from engine.assemble import assemble
from engine.checkpoint import restore_run, save_run
from engine.finish import finish
from engine.hooks import EpochCallback, Hook
from engine.run import Run
from engine.stages import Stage, Train
from engine.trackers import close_trackers, start_trackers
from runspec import RunSpec
from runspec.config import ExperimentConfig
from runspec.folder import Files, RunFolder
from utils.schema import NoOptions, Problem


class Experiment:
    """Base class of experiments (see the module docstring).

    - ``Options``: a dataclass of the experiment's own options, read from ``training.<section>``;
    - ``check_config(cfg, options, problems)``: cross-field checks, reported by ``validate``;
    - ``stages(run)``: the pipeline, built after the run's objects exist (it may read ``run``);
    - ``hooks(run, default)``: the end-of-epoch hooks (:mod:`engine.hooks`), ``default`` or an extension of it;
    - ``results(run)``: what the experiment adds to ``results.json``.
    """

    Options: ClassVar[type] = NoOptions
    section: ClassVar[str | None] = None
    supports_ablation: ClassVar[bool] = True  # compressor.ablation (one-mask sanity checks) applies
    supports_structure: ClassVar[bool] = True  # compressor.structure (one-shot structured masks) applies

    def __init__(self, spec: RunSpec) -> None:
        self.spec, self.cfg, self.options = spec, spec.config, spec.experiment_options

    @classmethod
    def check_config(cls, cfg: ExperimentConfig, options: Any, problems: list[Problem]) -> None:
        """Append a :class:`Problem` for every option that does not fit the rest of the config."""

    def stages(self, run: Run) -> list[Stage]:  # pragma: no cover - abstract
        raise NotImplementedError("abstract: experiments implement stages()")

    def hooks(self, run: Run, default: list[Hook]) -> list[Hook]:
        """The hooks run after every training epoch, in order (see :mod:`engine.hooks`); ``default`` unchanged."""
        return default

    def results(self, run: Run) -> dict[str, Any]:
        return {}


class NotRepairable(RuntimeError):
    """``execute(..., repair=True)`` on a run whose checkpoint is not at the end: repairing would train."""


def execute(spec: RunSpec, folder: RunFolder, *, log: Callable[[str], None] = print,
            on_epoch_end: EpochCallback | None = None, resume: bool = True, repair: bool = False) -> dict[str, Any]:
    """Run (or resume) the experiment of ``spec`` in ``folder``; returns the results.  ``repair``: only rewrite
    what :func:`finish` writes (and ``config.json``) from a checkpoint at the end of the run; a run without
    one raises :class:`NotRepairable` before any stage runs."""
    experiment = spec.experiment(spec)
    run = assemble(spec, folder, log=log, on_epoch_end=on_epoch_end, experiment=experiment)
    stages = experiment.stages(run)
    run.total_epochs = math.ceil(max((s.until for s in stages if isinstance(s, Train)), default=0))
    restored = (resume or repair) and restore_run(run)
    if repair and (not restored or run.state.stage < len(stages)):
        where = f"at stage {run.state.stage + 1}/{len(stages)}" if restored else "missing or damaged"
        raise NotRepairable(f"{Files.CHECKPOINT} is {where}, not at the end of the run: rebuilding the run's "
                            "files from it would train again")
    if restored:
        where = stages[run.state.stage].describe() if run.state.stage < len(stages) else "the end"
        log(f"  resuming at stage {run.state.stage + 1}/{len(stages)} ({where}), after {run.state.step} "
            f"training steps")
    start_trackers(run)
    run.beat("start")
    try:
        while run.state.stage < len(stages):
            stage = stages[run.state.stage]
            stage.run(run)
            run.state.stage += 1
            if stage.checkpoint_after:
                save_run(run)
        return finish(run, experiment.results(run))
    finally:
        close_trackers(run)
