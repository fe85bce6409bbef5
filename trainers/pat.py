"""Pruning after training (experiment ``pat``), the baseline the second-order PaI paper compares with.

train the dense network ``training.num_steps`` epochs -> score the *trained* weights with
``training.compressor`` (any registered criterion; data-dependent ones on the mask data) -> keep the top
(1 - sparsity), global or per layer -> fine-tune ``training.pat.finetune_epochs`` epochs with the mask
enforced, the optimizer and schedule restarted (learning rate ``pat.finetune_learning_rate`` or the
optimizer's), no rewinding.  ``compressor.warmup`` does not apply (the trained BN statistics are
used).  ``iterations.json`` records the dense test accuracy, the accuracy right
after pruning and after fine-tuning; results.json holds the same keys as ``pbt`` (so PaI criteria and
PaT share one report table).  Checkpoints after every epoch and after pruning (exact resume).
"""

from __future__ import annotations

import time
from typing import Any

import torch

import compressors
from trainers import register
from trainers.irp import StagedTrainer


@register("pat")
class PruneAfterTraining(StagedTrainer):
    """Experiment ``pat`` (see the module docstring): stage 1 dense training, stage 2 fine-tuning."""

    def _num_stages(self) -> int:
        return 2

    def _stage_epochs(self, stage: int) -> int:
        return self.cfg.training.num_steps if stage == 0 else self.cfg.training.pat.finetune_epochs

    def _stage_learning_rate(self, stage: int) -> float:
        lr = self.cfg.training.pat.finetune_learning_rate
        return lr if stage == 1 and lr is not None else self.cfg.training.optimizer.learning_rate

    def _start(self, state: dict[str, Any]) -> None:
        comp = self.cfg.training.compressor
        names = compressors.prunable_names(self.model, include_classifier=comp.prune_classifier,
                                           include_biases=comp.prune_biases)
        params = dict(self.model.named_parameters())
        self._set_masks({n: torch.ones_like(params[n]) for n in names})
        state["pruning"] = {"warmup_seconds": 0.0, "scoring_seconds": 0.0}

    def _end_stage(self, stage: int, state: dict[str, Any]) -> None:
        comp = self.cfg.training.compressor
        test = self._test()
        if stage == 1:
            self._record(state, {"phase": "fine-tuned", "density": 1.0 - compressors.global_sparsity(self.masks),
                                 "test_acc": test["acc"], "test_loss": test["loss"],
                                 "layer_density": compressors.density(self.masks)})
            return
        self._record(state, {"phase": "dense", "density": 1.0, "test_acc": test["acc"], "test_loss": test["loss"]})
        if self.compressor.prunes:
            tic = time.perf_counter()
            scores = self._score(stage, comp.sparsity)
            self._set_masks(compressors.select(scores, comp.sparsity, comp.mask))
            state["pruning"]["scoring_seconds"] = time.perf_counter() - tic
        after = self._test()
        density = 1.0 - compressors.global_sparsity(self.masks)
        self._record(state, {"phase": "pruned", "density": density, "test_acc": after["acc"],
                             "test_loss": after["loss"], "layer_density": compressors.density(self.masks)})
        self.log(f"  dense test_acc {test['acc']:.4f} -> pruned with {self.compressor.name} to density "
                 f"{density:.4f}: test_acc {after['acc']:.4f} before fine-tuning")
