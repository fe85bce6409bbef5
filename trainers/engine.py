"""Building blocks shared by trainers: optimizer and schedule, mask enforcement, one epoch, evaluation,
BN-statistics warmup."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from utils.config import OptimizerConfig


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, L2 weight decay), Adam or AdamW (decoupled weight decay)."""
    kw = cfg.kwargs
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=kw.momentum, nesterov=kw.nesterov,
                               weight_decay=kw.w_decay)
    opt_cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=cfg.learning_rate, betas=tuple(kw.betas), weight_decay=kw.w_decay)


def lr_factor(epoch: int, cfg: OptimizerConfig, total_epochs: int) -> float:
    """Learning-rate multiplier for (0-based) epoch ``epoch``: linear warm-up, then none/step/cosine."""
    kw = cfg.kwargs
    if epoch < kw.warmup_epochs:
        return (epoch + 1) / kw.warmup_epochs
    if kw.scheduler == "step":
        return kw.lr_drop_factor ** sum(1 for d in kw.lr_drops if epoch >= d)
    if kw.scheduler == "cosine":
        span = max(total_epochs - kw.warmup_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - kw.warmup_epochs) / span))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_epochs: int):
    """A per-epoch LambdaLR implementing :func:`lr_factor` (its state is just the epoch count)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, cfg, total_epochs))


class MaskEnforcer:
    """Keeps pruned weights exactly zero: masks gradients before the step (so momentum / Adam state of
    pruned weights stays zero) and re-applies the mask to the weights after it (so weight decay or any
    optimizer cannot revive them).  Both are single fused ``torch._foreach_mul_`` calls."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        self.names = [n for n in masks if n in params]
        self.params = [params[n] for n in self.names]
        self.masks = [masks[n].to(device=params[n].device, dtype=params[n].dtype) for n in self.names]

    def __bool__(self) -> bool:
        return bool(self.params)

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        pairs = [(p.grad, m) for p, m in zip(self.params, self.masks) if p.grad is not None]
        if pairs:
            grads, masks = zip(*pairs)
            torch._foreach_mul_(list(grads), list(masks))


@dataclass
class EpochStats:
    loss: float
    acc: float
    seconds: float
    images_per_s: float


def train_epoch(model: nn.Module, loader: Iterable, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device, enforcer: MaskEnforcer | None = None, grad_clip: float | None = None,
                desc: str = "train") -> EpochStats:
    """One pass over ``loader`` with the mask enforced after every step."""
    model.train()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    tic = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out, y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"training loss is {loss.item()} after {seen} samples of this epoch")
        loss.backward()
        if enforcer:
            enforcer.apply_to_grads()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if enforcer:
            enforcer.apply_to_weights()
        n = y.shape[0]
        seen += n
        total_loss += loss.detach().double() * n
        correct += (out.detach().argmax(1) == y).sum()
        bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", refresh=False)
    seconds = time.perf_counter() - tic
    return EpochStats(loss=total_loss.item() / max(seen, 1), acc=correct.item() / max(seen, 1),
                      seconds=seconds, images_per_s=seen / seconds if seconds > 0 else float("nan"))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, loss_fn: nn.Module, device: torch.device,
             num_classes: int) -> dict[str, float]:
    """Loss, accuracy and macro precision / recall / F1 (classes absent from both labels and predictions
    are left out, as scikit-learn does; zero_division=0)."""
    model.eval()
    total_loss, seen = 0.0, 0
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        total_loss += loss_fn(out, y).item() * y.shape[0]
        seen += y.shape[0]
        pred = out.argmax(1)
        conf += torch.bincount(y * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    c = conf.cpu().numpy().astype(np.float64)
    tp = np.diag(c)
    support, predicted = c.sum(1), c.sum(0)
    present = (support + predicted) > 0
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "loss": total_loss / max(seen, 1),
        "acc": float(tp.sum() / max(seen, 1)),
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "recall": float(recall[present].mean()) if present.any() else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
    }


@torch.no_grad()
def bn_warmup(model: nn.Module, loader: Iterable, passes: int, device: torch.device) -> None:
    """``passes`` train-mode forward passes over ``loader`` without gradients: only BN running
    statistics change (weights untouched; train/eval mode restored)."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for p in range(passes):
        for x, _ in tqdm(loader, desc=f"BN warmup {p + 1}/{passes}", leave=False, dynamic_ncols=True, disable=None):
            model(x.to(device, non_blocking=True))
    for m, mode in modes.items():
        m.training = mode
