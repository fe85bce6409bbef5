"""Iterative rewind pruning (experiment ``irp``) and the shared staged-training machinery of ``pat``.

Lottery-ticket style IRP, as used by AutoSparse (arXiv 2408.14757) to label weights:

    theta0 (initial weights, after the BN warm-up) -> for i = 1..N:
        train ``epochs_per_iteration`` epochs with the current mask (optimizer and schedule restarted)
        -> rank the remaining weights with ``training.compressor`` (default in the examples: magnitude of
           the trained weights; any registered criterion, data-dependent ones scored on the mask data)
        -> prune to density d^(i/N) (``schedule: geometric``; ``equal`` removes the same count each
           iteration), d = 1 - ``training.compressor.sparsity``, global or per-layer (``compressor.mask``)
        -> rewind: surviving weights back to theta0 (or, with ``rewind_epoch`` k > 0, to the weights after
           k epochs of the first iteration); pruned weights are exactly zero
    -> train the final sparse network ``final_epochs`` epochs and test it.

Only the prunable weights are masked.  With ``reset_non_prunable: true`` (default) *everything else*
is rewound too: BN weights/biases and running statistics, biases and unpruned layers (e.g. the
classifier) go back to the rewind point; with ``false`` they keep their trained values.

The *surviving score* of a weight counts the pruning steps it survived (0..N).  At the end the
AutoSparse training set ``autos_dataset.pt`` (format: :mod:`autosparse.dataset`) is written: per
prunable tensor theta0, the mean mask-data gradient g0 at theta0 (eval mode, the shared estimator) and
the surviving score.  Per iteration, ``iterations.json`` / ``iterations.csv`` record the density the
network was trained at, its test accuracy, the density after pruning and the per-layer densities.

Resume: a checkpoint (model, masks, optimizer, scheduler, RNG states, survivors, theta0, rewind
point, records) is written after every epoch and every pruning step, so a killed run resumes where it
stopped and ends with the same masks, scores and weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import torch
from torch import nn

import compressors
from autosparse.dataset import build_dataset, save_dataset
from compressors.base import preserved_state
from compressors.estimators import mean_gradient
from trainers import register
from trainers.engine import MaskEnforcer, bn_warmup, build_optimizer, build_scheduler, evaluate, train_epoch
from trainers.pbt import PruneBeforeTraining, _better, _state_to_cpu
from utils.io import load_torch, save_torch, write_text
from utils.seeding import derive_seed, rng_state, seed_everything, set_rng_state

Scores = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------- pure building blocks
def sparsity_schedule(target_sparsity: float, iterations: int, schedule: str = "geometric") -> list[float]:
    """Sparsity after each of the N pruning iterations (the last one is exactly the target).

    ``geometric``: density d^(i/N), d = 1 - target; ``equal``: sparsity target * i / N (the same number of
    weights removed every iteration)."""
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if schedule not in ("geometric", "equal"):
        raise ValueError(f"schedule must be 'geometric' or 'equal', got {schedule!r}")
    d = 1.0 - target_sparsity
    out = []
    for i in range(1, iterations + 1):
        if i == iterations:
            out.append(target_sparsity)
        elif schedule == "geometric":
            out.append(1.0 - d ** (i / iterations))
        else:
            out.append(target_sparsity * i / iterations)
    return out


def prune_step(scores: Scores, masks: Scores, sparsity: float,
               scope: Literal["global", "layer"] = "global") -> Scores:
    """Masks at ``sparsity`` keeping the best-scored *remaining* weights: already pruned weights rank
    below every remaining one (they never come back), so the new masks are subsets of ``masks``."""
    top = torch.finfo(torch.float64).max
    ranked = {}
    for n, s in scores.items():
        s = torch.nan_to_num(s.detach().double(), nan=-top, posinf=top, neginf=-top)
        m = masks[n].to(s.device).bool()
        ranked[n] = torch.where(m, s, torch.full_like(s, float("-inf")))
    new = compressors.select(ranked, sparsity, scope)
    return {n: (new[n].to(masks[n].device) * masks[n]).to(masks[n].dtype) for n in masks}


@torch.no_grad()
def rewind(model: nn.Module, state: dict[str, torch.Tensor], masks: Scores, reset_non_prunable: bool = True) -> None:
    """Rewind ``model`` to ``state`` (a state dict): the masked tensors always, everything else (BN
    parameters and statistics, biases, unpruned layers) only with ``reset_non_prunable``; then zero the
    pruned weights."""
    params = dict(model.named_parameters())
    if reset_non_prunable:
        model.load_state_dict(state)
    else:
        for n in masks:
            params[n].copy_(state[n])
    for n, m in masks.items():
        params[n].mul_(m.to(params[n].device, params[n].dtype))


def _rows_csv(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], dict)))
    lines = [",".join(keys)] + [",".join("" if r.get(k) is None else str(r.get(k)) for k in keys) for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- staged training loop
class StagedTrainer(PruneBeforeTraining):
    """Training in stages, each with a freshly built optimizer and schedule, and a hook between stages
    (pruning, rewinding).  Subclasses implement :meth:`_num_stages`, :meth:`_stage_epochs`,
    :meth:`_start` and :meth:`_end_stage`.  The last stage tracks the best-validation model.  A
    checkpoint is written after every epoch and every stage."""

    # -- subclass interface
    def _num_stages(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _stage_epochs(self, stage: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _stage_learning_rate(self, stage: int) -> float:
        return self.cfg.training.optimizer.learning_rate

    def _start(self, state: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _end_stage(self, stage: int, state: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _after_epoch(self, stage: int, stage_epoch: int, state: dict[str, Any]) -> None:
        pass

    # -- shared pieces
    def _new_optimizer(self, stage: int) -> None:
        opt_cfg = dataclasses.replace(self.cfg.training.optimizer, learning_rate=self._stage_learning_rate(stage))
        self.optimizer = build_optimizer(self.model, opt_cfg)
        self.scheduler = build_scheduler(self.optimizer, opt_cfg, max(self._stage_epochs(stage), 1))

    def _set_masks(self, masks: Scores) -> None:
        self.masks = {n: m.to(self.device) for n, m in masks.items()}
        pruning = self.compressor.prunes and any(not bool(m.all()) for m in self.masks.values())
        self.enforcer = MaskEnforcer(self.model, self.masks if pruning else {})
        self.enforcer.apply_to_weights()

    def _mask_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "prunable_parameters": sum(m.numel() for m in self.masks.values()),
            "kept_parameters": int(sum(float(m.sum().item()) for m in self.masks.values())),
            "achieved_sparsity": compressors.global_sparsity(self.masks),
            "total_parameters": sum(p.numel() for p in self.model.parameters()),
            "layer_density": compressors.density(self.masks),
            "layer_collapse": compressors.collapsed_layers(self.masks),
            "mask_samples": len(self.loaders.mask_indices),
        }
        info["overall_sparsity"] = 1.0 - (info["total_parameters"] - info["prunable_parameters"]
                                          + info["kept_parameters"]) / info["total_parameters"]
        return info

    def _test(self) -> dict[str, float]:
        return evaluate(self.train_model, self.loaders.test, self.loss_fn, self.device, self.num_classes,
                        **self.loop_options)

    def _score(self, stage: int, sparsity: float) -> Scores:
        names = list(self.masks)
        seed_everything(derive_seed(self.cfg.general.seed, "scoring", stage))
        return self.compressor.score(self.model, self.loaders.mask, nn.CrossEntropyLoss(), params=names,
                                     sparsity=sparsity if self.compressor.iterative else None)

    def _record(self, state: dict[str, Any], row: dict[str, Any]) -> None:
        state["records"].append(row)
        self.store.write("iterations.json", state["records"])
        write_text(self.store.file("iterations.csv"), _rows_csv(state["records"]))

    def _save(self, state: dict[str, Any]) -> None:
        save_torch(self.store.file("checkpoint.pt"), {
            "state": state, "model": self.model.state_dict(), "masks": {n: m.cpu() for n, m in self.masks.items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None, "rng": rng_state(),
        })

    def _load(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        state = ckpt["state"]
        self.model.load_state_dict(ckpt["model"])
        self._set_masks(ckpt["masks"])
        self._new_optimizer(min(state["stage"], self._num_stages() - 1))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        return state

    def run(self, resume: bool = True) -> dict[str, Any]:
        self._setup()
        ckpt_path = self.store.file("checkpoint.pt")
        if resume and ckpt_path.exists():
            state = self._load(load_torch(ckpt_path, map_location=self.device))
            self.log(f"  resuming at stage {state['stage'] + 1}/{self._num_stages()}, epoch {state['epoch']}")
        else:
            state = {"stage": 0, "epoch": 0, "global_epoch": 0, "history": [], "records": [],
                     "best_metric": None, "best_epoch": None, "best_model": None, "pruning": {}}
            self._start(state)
            self._new_optimizer(0)
            self._save(state)
        metric, cfg = self.cfg.validation.metric, self.cfg
        while state["stage"] < self._num_stages():
            stage, epochs = state["stage"], self._stage_epochs(state["stage"])
            last = stage == self._num_stages() - 1
            for e in range(state["epoch"], epochs):
                self.loaders.set_epoch(state["global_epoch"])
                lr = self.optimizer.param_groups[0]["lr"]
                stats = train_epoch(self.train_model, self.loaders.train, self.loss_fn, self.optimizer, self.device,
                                    self.enforcer, cfg.training.grad_clip,
                                    desc=f"stage {stage + 1}/{self._num_stages()} epoch {e + 1}/{epochs}",
                                    scaler=self.scaler, **self.loop_options)
                self.scheduler.step()
                row: dict[str, Any] = {"epoch": state["global_epoch"] + 1, "stage": stage + 1, "stage_epoch": e + 1,
                                       "density": 1.0 - compressors.global_sparsity(self.masks), "lr": lr,
                                       "train_loss": stats.loss, "train_acc": stats.acc,
                                       "epoch_seconds": stats.seconds, "images_per_s": stats.images_per_s}
                if (e + 1) % cfg.validation.frequency == 0 or e + 1 == epochs:
                    val = evaluate(self.train_model, self.loaders.val, self.loss_fn, self.device, self.num_classes,
                                   **self.loop_options)
                    row.update({f"val_{k}": v for k, v in val.items()})
                    if last and _better(metric, val[metric], state["best_metric"]):
                        state["best_metric"], state["best_epoch"] = val[metric], e + 1
                        state["best_model"] = _state_to_cpu(self.model.state_dict())
                state["history"].append(row)
                state["epoch"], state["global_epoch"] = e + 1, state["global_epoch"] + 1
                self._after_epoch(stage, e + 1, state)
                self._save(state)
                self._write_history(state["history"])
                val_txt = f" val_{metric} {row[f'val_{metric}']:.4f}" if f"val_{metric}" in row else ""
                self.log(f"  stage {stage + 1} epoch {e + 1}/{epochs}: density {row['density']:.4f} train_loss "
                         f"{stats.loss:.4f} train_acc {stats.acc:.4f}{val_txt} ({stats.seconds:.1f}s)")
                if self.on_epoch_end is not None:
                    self.on_epoch_end(state["global_epoch"], row)
            self._end_stage(stage, state)
            state["stage"], state["epoch"] = stage + 1, 0
            if state["stage"] < self._num_stages():
                self._new_optimizer(state["stage"])
            self._save(state)
        state["pruning"] = {**state["pruning"], **self._mask_info(), "iterations": state["records"]}
        save_torch(self.store.file("mask.pt"), {n: m.bool().cpu() for n, m in self.masks.items()})
        self._before_finish(state)
        return self._finish(state)

    def _before_finish(self, state: dict[str, Any]) -> None:
        pass


# ------------------------------------------------------------------------------------------ the irp
@register("irp")
class IterativeRewindPruning(StagedTrainer):
    """Experiment ``irp`` (see the module docstring).  Stages 1..N train and prune; stage N+1 trains the
    final sparse network."""

    def _setup(self) -> None:
        super()._setup()
        irp, comp = self.cfg.training.irp, self.cfg.training.compressor
        if not self.compressor.prunes:
            raise ValueError(f"training.compressor.class: irp ranks weights with a pruning criterion; "
                             f"'{comp.name}' prunes nothing (e.g. 'magnitude', the lottery-ticket choice)")
        self.epi = irp.epochs_per_iteration or self.cfg.training.num_steps
        if self.epi < 1:
            raise ValueError("training.irp.epochs_per_iteration (or training.num_steps): must be >= 1")
        self.final_epochs = self.epi if irp.final_epochs is None else irp.final_epochs
        if irp.rewind_epoch > self.epi:
            raise ValueError(f"training.irp.rewind_epoch: {irp.rewind_epoch} is beyond the first iteration's "
                             f"{self.epi} epochs; valid: 0..{self.epi}")
        self.sparsities = sparsity_schedule(comp.sparsity, irp.iterations, irp.schedule)

    def _num_stages(self) -> int:
        return self.cfg.training.irp.iterations + 1

    def _stage_epochs(self, stage: int) -> int:
        return self.epi if stage < self.cfg.training.irp.iterations else self.final_epochs

    def _start(self, state: dict[str, Any]) -> None:
        comp, irp = self.cfg.training.compressor, self.cfg.training.irp
        tic = time.perf_counter()
        if comp.warmup > 0:
            self.loaders.set_epoch(-1)
            bn_warmup(self.model, self.loaders.train, comp.warmup, self.device)
        names = compressors.prunable_names(self.model, include_classifier=comp.prune_classifier,
                                           include_biases=comp.prune_biases)
        params = dict(self.model.named_parameters())
        self._set_masks({n: torch.ones_like(params[n]) for n in names})
        state["theta0"] = _state_to_cpu(self.model.state_dict())
        state["rewind"] = state["theta0"] if irp.rewind_epoch == 0 else None
        state["grad0"] = None
        if irp.autos_dataset:
            with preserved_state(self.model):
                g = mean_gradient(self.model, names, self.loaders.mask, nn.CrossEntropyLoss())
            state["grad0"] = {n: v.detach().cpu() for n, v in g.items()}
        state["survivors"] = {n: torch.zeros(params[n].shape, dtype=torch.int16) for n in names}
        state["pruning"] = {"warmup_seconds": time.perf_counter() - tic, "scoring_seconds": 0.0,
                            "irp_sparsity_schedule": self.sparsities}

    def _after_epoch(self, stage: int, stage_epoch: int, state: dict[str, Any]) -> None:
        if stage == 0 and stage_epoch == self.cfg.training.irp.rewind_epoch:
            state["rewind"] = _state_to_cpu(self.model.state_dict())

    def _end_stage(self, stage: int, state: dict[str, Any]) -> None:
        irp, comp = self.cfg.training.irp, self.cfg.training.compressor
        test = self._test()
        trained_at = 1.0 - compressors.global_sparsity(self.masks)
        if stage == irp.iterations:  # the final sparse network
            self._record(state, {"iteration": "final", "trained_density": trained_at, "density": trained_at,
                                 "test_acc": test["acc"], "test_loss": test["loss"],
                                 "layer_density": compressors.density(self.masks)})
            self.log(f"  final sparse network: density {trained_at:.4f} test_acc {test['acc']:.4f}")
            return
        tic = time.perf_counter()
        scores = self._score(stage, self.sparsities[stage])
        new = prune_step(scores, self.masks, self.sparsities[stage], comp.mask)
        state["pruning"]["scoring_seconds"] += time.perf_counter() - tic
        for n, m in new.items():
            state["survivors"][n] += m.to("cpu", torch.int16)
        self._set_masks(new)
        rewind(self.model, {k: v.to(self.device) for k, v in state["rewind"].items()}, self.masks,
               irp.reset_non_prunable)
        density = 1.0 - compressors.global_sparsity(self.masks)
        self._record(state, {"iteration": stage + 1, "trained_density": trained_at, "test_acc": test["acc"],
                             "test_loss": test["loss"], "density": density,
                             "layer_density": compressors.density(self.masks)})
        self.log(f"  iteration {stage + 1}/{irp.iterations}: trained at density {trained_at:.4f} test_acc "
                 f"{test['acc']:.4f} -> pruned to density {density:.4f} and rewound")

    def _before_finish(self, state: dict[str, Any]) -> None:
        irp, cfg = self.cfg.training.irp, self.cfg
        if not irp.autos_dataset:
            return
        names = list(self.masks)
        theta0 = {n: state["theta0"][n] for n in names}
        ds = build_dataset(names, theta0, state["grad0"], state["survivors"], iterations=irp.iterations,
                           schedule=irp.schedule, target_sparsity=cfg.training.compressor.sparsity,
                           criterion=self.compressor.name, mask=cfg.training.compressor.mask,
                           model=cfg.model.name, dataset=cfg.dataset.name, seed=cfg.general.seed,
                           rewind_epoch=irp.rewind_epoch)
        save_dataset(self.store.file("autos_dataset.pt"), ds)
        state["pruning"]["autos_dataset"] = str(self.store.file("autos_dataset.pt"))
