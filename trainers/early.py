"""Pruning early in training (experiment ``early``), the protocol of the FTS paper ("Fishing For Cheap And
Efficient Pruners At Initialization", Gollini Navarrete et al. 2025): layer collapse "is easily overcome
by pruning within a single training epoch after initialization".

train the dense network ``training.early.prune_epoch`` epochs (fractional: 0.25 is a quarter of the
first epoch, counted in batches) -> score the network as it is then with ``training.compressor``
(through the score cache) and keep the top (1 - sparsity) -> train on with the mask to
``training.num_steps`` epochs in all; the optimizer and the schedule are not restarted.  The
best-validation model is chosen among the pruned epochs.  ``compressor.warmup`` does not apply (the
dense training sets the BN statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine import Experiment, Prune, PruneSettings, Train
from trainers import register
from utils.schema import Problem, option


@dataclass
class EarlyOptions:
    """Options of the ``early`` experiment (``training.early``)."""

    prune_epoch: float = option(1.0, "dense training epochs before pruning (fractional allowed, e.g. 0.25; "
                                     "counted in batches); must be below training.num_steps", min=0)


@register("early")
class PruneEarly(Experiment):
    """Experiment ``early`` (see the module docstring)."""

    Options = EarlyOptions
    section = "early"

    @classmethod
    def check_config(cls, cfg, options, problems) -> None:
        if options.prune_epoch >= cfg.training.num_steps:
            problems.append(Problem("training.early.prune_epoch", f"{options.prune_epoch:g} is not before the end "
                                    f"of training; valid: 0 <= prune_epoch < training.num_steps "
                                    f"({cfg.training.num_steps})"))

    def stages(self, run):
        epochs = self.cfg.training.num_steps
        return [Train(until=self.options.prune_epoch, schedule_epochs=epochs, validate_last=False),
                Prune(PruneSettings.of(self.cfg.training.compressor)),
                Train(until=epochs, new_optimizer=False, epochs_from=0, track_best=True)]
