"""Prune before training (experiment ``pbt``), the paper's pipeline.

BN warmup (``compressor.warmup`` passes) -> score the prunable weights on the mask data -> keep the top
(1 - sparsity) -> train ``num_steps`` epochs with the mask enforced, validating every ``frequency``
epochs -> test the final and the best-validation model.  Checkpoints after pruning and after every
epoch, so a killed run resumes and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

from engine import Experiment, Prune, PruneSettings, Train, Warmup
from trainers import register


@register("pbt")
class PruneBeforeTraining(Experiment):
    """The ``pbt`` pipeline (see the module docstring)."""

    def stages(self, run):
        comp = self.cfg.training.compressor
        return [Warmup(comp.warmup, comp.warmup_mode), Prune(PruneSettings.of(comp)),
                Train(until=self.cfg.training.num_steps, track_best=True)]
