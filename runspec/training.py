"""Optimizer and learning-rate schedule of a run, built from ``training.optimizer``."""

from __future__ import annotations

import math

import torch
from torch import nn

from runspec.config import OptimizerConfig


def build_optimizer(model: nn.Module, cfg: OptimizerConfig,
                    learning_rate: float | None = None) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, L2 weight decay), Adam or AdamW (decoupled weight decay) over the
    trainable parameters; ``learning_rate`` overrides the config's (e.g. a fine-tuning stage)."""
    kw = cfg.kwargs
    lr = cfg.learning_rate if learning_rate is None else learning_rate
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=kw.momentum, nesterov=kw.nesterov, weight_decay=kw.w_decay)
    opt_cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=lr, betas=tuple(kw.betas), weight_decay=kw.w_decay)


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
