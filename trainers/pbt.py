"""Prune before training (experiment ``pbt``), the paper's pipeline.

seed -> loaders and model -> BN warmup -> score the prunable weights on the mask data -> keep the top
(1 - sparsity) -> train ``num_steps`` epochs with the mask enforced -> validate every ``frequency``
epochs -> test the final and the best-validation model.  After pruning and after every epoch a
checkpoint (model, mask, optimizer, scheduler, epoch, best-val state, history, every RNG state) is
written atomically, so a killed run resumes from its last completed epoch and ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch
from torch import nn

import compressors
import data
import models
from compressors.cache import score_with_cache
from trainers import register
from trainers.engine import (
    MaskEnforcer,
    bn_warmup,
    build_optimizer,
    build_scheduler,
    evaluate,
    make_scaler,
    prepare_model,
    train_epoch,
)
from utils.config import ExperimentConfig
from utils.io import load_torch, save_torch, write_text
from utils.results import RunStore
from utils.seeding import derive_seed, rng_state, seed_everything, set_rng_state

EpochCallback = Callable[[int, dict[str, Any]], None]


def select_device(cfg: ExperimentConfig) -> torch.device:
    """``cuda:<gpu_id>`` when GPUs are requested and available, else the CPU."""
    gpu = cfg.general.gpu
    if gpu.ngpus > 0 and torch.cuda.is_available():
        return torch.device("cuda", gpu.gpu_id)
    return torch.device("cpu")


def _state_to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _better(metric: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new < best if metric == "loss" else new > best


@register("pbt")
class PruneBeforeTraining:
    """The ``pbt`` pipeline (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, store: RunStore, *, on_epoch_end: EpochCallback | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.store = store
        self.on_epoch_end = on_epoch_end
        self.log = log
        self.device = select_device(cfg)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        seed = cfg.general.seed
        if cfg.general.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(seed)
        ds = cfg.dataset
        source = data.get(ds.name)(root=ds.root, download=ds.download, **ds.options)
        splits = source.load()
        comp = cfg.training.compressor
        self.loaders = data.build_loaders(
            splits, batch_size=ds.batch_size, eval_batch_size=ds.eval_batch_size, num_workers=ds.num_workers,
            train4val=ds.train4val, val_fraction=ds.val_fraction, mask_batch_size=comp.batch_size,
            per_class_samples=comp.per_class_samples, seed=seed, pin_memory=self.device.type == "cuda",
            loader=ds.loader, device=self.device, dataset_name=f"dataset '{ds.name}'")
        self.num_classes = cfg.model.num_classes or splits.num_classes
        seed_everything(derive_seed(seed, "model-init"))
        self.model = models.build(cfg.model.name, num_classes=self.num_classes, input_shape=splits.input_shape,
                                  **cfg.model.options).to(self.device)
        tr = cfg.training
        # self.model keeps plain state_dict keys; self.train_model is what the loop calls (maybe compiled)
        self.train_model = prepare_model(self.model, self.device, channels_last=tr.channels_last,
                                         compile=tr.compile, log=self.log)
        self.scaler = make_scaler(self.device, tr.amp)
        self.loop_options = {"amp": tr.amp, "channels_last": tr.channels_last}
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.training.criterion.kwargs.label_smoothing)
        self.compressor = compressors.build(comp.name, **comp.options)
        self.optimizer = build_optimizer(self.model, cfg.training.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.training.optimizer, cfg.training.num_steps)

    # ---------------------------------------------------------------- pruning
    def _prune(self) -> dict[str, Any]:
        cfg, comp = self.cfg, self.cfg.training.compressor
        info: dict[str, Any] = {"warmup_seconds": 0.0, "scoring_seconds": 0.0}
        tic = time.perf_counter()
        if comp.warmup > 0:
            self.loaders.set_epoch(-1)
            bn_warmup(self.model, self.loaders.train, comp.warmup, self.device)
        info["warmup_seconds"] = time.perf_counter() - tic
        names = compressors.prunable_names(self.model, include_classifier=comp.prune_classifier,
                                           include_biases=comp.prune_biases)
        if self.compressor.prunes:
            seed_everything(derive_seed(cfg.general.seed, "scoring"))
            tic = time.perf_counter()
            scores, cache_info = score_with_cache(
                self.compressor, self.model, self.loaders.mask, nn.CrossEntropyLoss(), names=names,
                sparsity=comp.sparsity if self.compressor.iterative else None,
                cache_dir=self.store.cache_dir, mask_indices=self.loaders.mask_indices)
            info["scoring_seconds"] = time.perf_counter() - tic
            info.update(cache_info)
            self.masks = compressors.select(scores, comp.sparsity, comp.mask)
        else:
            params = dict(self.model.named_parameters())
            self.masks = {n: torch.ones_like(params[n]) for n in names}
        self.masks = {n: m.to(self.device) for n, m in self.masks.items()}
        self.enforcer = MaskEnforcer(self.model, self.masks if self.compressor.prunes else {})
        self.enforcer.apply_to_weights()
        dens = compressors.density(self.masks)
        info.update({
            "criterion_diagnostics": getattr(self.compressor, "diagnostics", {}) or {},
            "prunable_parameters": sum(m.numel() for m in self.masks.values()),
            "kept_parameters": int(sum(float(m.sum().item()) for m in self.masks.values())),
            "achieved_sparsity": compressors.global_sparsity(self.masks),
            "total_parameters": sum(p.numel() for p in self.model.parameters()),
            "layer_density": dens,
            "layer_collapse": compressors.collapsed_layers(self.masks),
            "mask_samples": len(self.loaders.mask_indices),
        })
        info["overall_sparsity"] = 1.0 - (info["total_parameters"] - info["prunable_parameters"]
                                          + info["kept_parameters"]) / info["total_parameters"]
        save_torch(self.store.file("mask.pt"), {n: m.bool().cpu() for n, m in self.masks.items()})
        return info

    # ------------------------------------------------------------- checkpoint
    def _checkpoint(self, epoch: int, state: dict[str, Any]) -> None:
        save_torch(self.store.file("checkpoint.pt"), {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "masks": {n: m.cpu() for n, m in self.masks.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_metric": state["best_metric"], "best_epoch": state["best_epoch"],
            "best_model": state["best_model"],
            "history": state["history"], "pruning": state["pruning"],
            "rng": rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        })

    def _restore(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        self.model.load_state_dict(ckpt["model"])
        self.masks = {n: m.to(self.device) for n, m in ckpt["masks"].items()}
        self.enforcer = MaskEnforcer(self.model, self.masks if self.compressor.prunes else {})
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        return {k: ckpt[k] for k in ("best_metric", "best_epoch", "best_model", "history", "pruning")}

    # -------------------------------------------------------------------- run
    def run(self, resume: bool = True) -> dict[str, Any]:
        cfg = self.cfg
        self._setup()
        ckpt_path = self.store.file("checkpoint.pt")
        if resume and ckpt_path.exists():
            ckpt = load_torch(ckpt_path, map_location=self.device)
            state = self._restore(ckpt)
            start = ckpt["epoch"]
            self.log(f"  resuming after epoch {start}/{cfg.training.num_steps}")
        else:
            pruning = self._prune()
            state = {"best_metric": None, "best_epoch": None, "best_model": None, "history": [],
                     "pruning": pruning}
            start = 0
            self._checkpoint(0, state)
            self.log(f"  pruned with {self.compressor.name}: sparsity {pruning['achieved_sparsity']:.4f} "
                     f"of {pruning['prunable_parameters']:,} prunable weights "
                     f"(warmup {pruning['warmup_seconds']:.1f}s, scoring {pruning['scoring_seconds']:.1f}s)")
            if pruning["layer_collapse"]:
                self.log(f"  layer collapse: {pruning['layer_collapse']}")

        epochs = cfg.training.num_steps
        metric = cfg.validation.metric
        for epoch in range(start, epochs):
            self.loaders.set_epoch(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            stats = train_epoch(self.train_model, self.loaders.train, self.loss_fn, self.optimizer, self.device,
                                self.enforcer, cfg.training.grad_clip, desc=f"epoch {epoch + 1}/{epochs}",
                                scaler=self.scaler, **self.loop_options)
            self.scheduler.step()
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": stats.loss, "train_acc": stats.acc,
                                   "epoch_seconds": stats.seconds, "images_per_s": stats.images_per_s}
            if (epoch + 1) % cfg.validation.frequency == 0 or epoch + 1 == epochs:
                val = evaluate(self.train_model, self.loaders.val, self.loss_fn, self.device, self.num_classes,
                               **self.loop_options)
                row.update({f"val_{k}": v for k, v in val.items()})
                if _better(metric, val[metric], state["best_metric"]):
                    state["best_metric"], state["best_epoch"] = val[metric], epoch + 1
                    state["best_model"] = _state_to_cpu(self.model.state_dict())
            state["history"].append(row)
            self._checkpoint(epoch + 1, state)
            self._write_history(state["history"])
            val_txt = f" val_{metric} {row[f'val_{metric}']:.4f}" if f"val_{metric}" in row else ""
            self.log(f"  epoch {epoch + 1}/{epochs}: train_loss {stats.loss:.4f} train_acc {stats.acc:.4f}"
                     f"{val_txt} ({stats.seconds:.1f}s, {stats.images_per_s:,.0f} img/s)")
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch + 1, row)

        return self._finish(state)

    def _write_history(self, history: list[dict[str, Any]]) -> None:
        self.store.write("history.json", history)
        keys = list(dict.fromkeys(k for row in history for k in row))
        lines = [",".join(keys)] + [",".join("" if row.get(k) is None else f"{row.get(k)}" for k in keys)
                                    for row in history]
        write_text(self.store.file("history.csv"), "\n".join(lines) + "\n")

    def _finish(self, state: dict[str, Any]) -> dict[str, Any]:
        test = evaluate(self.model, self.loaders.test, self.loss_fn, self.device, self.num_classes)
        final_state = copy.deepcopy(self.model.state_dict())
        if state["best_model"] is not None:
            self.model.load_state_dict(state["best_model"])
            best = evaluate(self.model, self.loaders.test, self.loss_fn, self.device, self.num_classes)
            self.model.load_state_dict(final_state)
        else:
            best = dict(test)
        save_torch(self.store.file("final_model.pt"), _state_to_cpu(final_state))
        history = state["history"]
        results: dict[str, Any] = {
            **{f"final_test_{k}": v for k, v in test.items()},
            **{f"best_val_test_{k}": v for k, v in best.items()},
            "best_val_epoch": state["best_epoch"], "best_val_metric": state["best_metric"],
            "validation_metric": self.cfg.validation.metric, "validation_on_test_set": self.loaders.val_is_test,
            "epochs": len(history),
            "epoch_seconds": [row["epoch_seconds"] for row in history],
            "train_seconds": sum(row["epoch_seconds"] for row in history),
            **state["pruning"],
        }
        self.store.write("results.json", results)
        return results
