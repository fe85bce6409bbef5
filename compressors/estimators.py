"""Shared estimators used by the data-dependent criteria (one place, reused by every criterion).

Notation (paper, Sec. 3): the mask data is split into B mask batches; ell_b is the mean loss over batch
b with the model in eval mode (BN uses running statistics); g_b = grad ell_b.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from compressors.base import model_device


def batches_on(loader: Iterable, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Materialise the mask data on ``device`` (it is small: per_class_samples x classes)."""
    return [(x.to(device), y.to(device)) for x, y in loader]


def summed_gradient(
    model: nn.Module, names: Sequence[str], loader: Iterable, loss_fn: nn.Module
) -> dict[str, torch.Tensor]:
    """sum_b g_b: gradient of sum_b ell_b with respect to the named parameters (eval mode)."""
    params = dict(model.named_parameters())
    targets = [params[n] for n in names]
    model.eval()
    total = [torch.zeros_like(p) for p in targets]
    for x, y in batches_on(loader, model_device(model)):
        grads = torch.autograd.grad(loss_fn(model(x), y), targets, allow_unused=True)
        for acc, g in zip(total, grads):
            if g is not None:
                acc.add_(g)
    return dict(zip(names, total))
