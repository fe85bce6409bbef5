"""Pruning after training (experiment ``pat``), the baseline the second-order PaI paper compares with.

train the dense network ``training.num_steps`` epochs -> score the *trained* weights with
``training.compressor`` (any registered criterion; data-dependent ones on the mask data, through the
score cache) -> keep the top (1 - sparsity), global or per layer -> fine-tune
``training.pat.finetune_epochs`` epochs with the mask enforced, the optimizer and schedule restarted
(learning rate ``pat.finetune_learning_rate`` or the optimizer's), no rewinding.  ``compressor.warmup``
does not apply (the trained BN statistics are used).  ``iterations.json`` records the dense test
accuracy, the accuracy right after pruning and after fine-tuning; results.json holds the same keys as
``pbt`` (so PaI criteria and PaT share one report table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from compressors import density
from engine import Call, Experiment, Prune, PruneSettings, Train
from trainers import register
from utils.schema import option


@dataclass
class PaTOptions:
    """Options of the ``pat`` experiment (``training.pat``)."""

    finetune_epochs: int = option(10, "fine-tuning epochs after pruning the trained dense network "
                                      "(training.num_steps is the dense training)", min=0)
    finetune_learning_rate: Optional[float] = option(None, "initial learning rate of the fine-tuning (default: "
                                                           "training.optimizer.learning_rate; the schedule restarts)",
                                                     min=0, min_exclusive=True)


def record_test(run, phase: str) -> None:
    """A row of ``iterations.json``: the test accuracy of the network as it is now."""
    test = run.test()
    run.record({"phase": phase, "density": run.density(), "test_acc": test["acc"], "test_loss": test["loss"],
                **({} if phase == "dense" else {"layer_density": density(run.masks)})})
    run.log(f"  {phase}: density {run.density():.4f} test_acc {test['acc']:.4f}")


@register("pat")
class PruneAfterTraining(Experiment):
    """Experiment ``pat`` (see the module docstring)."""

    Options = PaTOptions
    section = "pat"

    def stages(self, run):
        epochs, o = self.cfg.training.num_steps, self.options
        return [
            Train(until=epochs, label=1),
            Call(record_test, "test the dense network", kwargs={"phase": "dense"}),
            Prune(PruneSettings.of(self.cfg.training.compressor), seed=("scoring", 0)),
            Call(record_test, "test the pruned network", kwargs={"phase": "pruned"}),
            Train(until=epochs + o.finetune_epochs, learning_rate=o.finetune_learning_rate, track_best=True, label=2),
            Call(record_test, "test the fine-tuned network", kwargs={"phase": "fine-tuned"}),
        ]

    def results(self, run):
        return {"iterations": run.state.records}
