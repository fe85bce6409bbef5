"""Naive reference loops (one autograd call per batch / probe) and the small fixtures they run on, for the
estimator and criterion tests."""

from __future__ import annotations

import math

import torch
from torch import nn


def small_cnn() -> nn.Module:
    """A small CNN with BN (non-trivial running statistics), an in-place ReLU after a hidden Linear,
    biases, a strided conv and a classifier."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net


def mask_batches(sizes: tuple[int, ...] = (3, 3, 2), seed: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in sizes]


LOSS = nn.CrossEntropyLoss()


def naive_batch_grads(model: nn.Module, names: list[str], batches, T: float = 1.0) -> list[dict[str, torch.Tensor]]:
    """g_b = grad of the batch-mean loss, one batch at a time (the reference code's loop)."""
    model.eval()
    params = dict(model.named_parameters())
    out = []
    for x, y in batches:
        grads = torch.autograd.grad(LOSS(model(x) / T, y), [params[n] for n in names])
        out.append({n: g.detach() for n, g in zip(names, grads)})
    return out


def naive_hutchinson(model: nn.Module, names: list[str], batches, probes: int, seed: int, T: float):
    """One separate HVP per (batch, probe), probes drawn as documented in ``RademacherProbes``."""
    model.eval()
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    us: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    sizes = [params[n].numel() for n in names]
    total = sum(sizes)

    def probe() -> dict[str, torch.Tensor]:  # the documented stream: one byte per 8 entries, bit j of byte i
        raw = torch.randint(0, 256, ((total + 7) // 8,), generator=gen)  # -> entry 8i + j, set = +1
        signs = torch.tensor([1.0 if (int(v) >> j) & 1 else -1.0 for v in raw for j in range(8)])[:total]
        return {n: part.view(params[n].shape) for n, part in zip(names, signs.split(sizes))}

    for x, y in batches:
        zs = [probe() for _ in range(probes)]
        for z in zs:
            grads = torch.autograd.grad(LOSS(model(x) / T, y), [params[n] for n in names], create_graph=True)
            dot = sum((g * z[n]).sum() for g, n in zip(grads, names))
            hz = torch.autograd.grad(dot, [params[n] for n in names])
            for n, h in zip(names, hz):
                us[n].append(z[n] * h)
    stacked = {n: torch.stack(v) for n, v in us.items()}
    M = len(batches) * probes
    return ({n: u.mean(0) for n, u in stacked.items()}, {n: u.std(0) / math.sqrt(M) for n, u in stacked.items()})
