"""TinyImageNet ResNets as in the paper's code: the CIFAR ResNet (3x3 stride-1 stem, no max-pool, four
stages, adaptive average pool) with 200 outputs for 64x64 inputs.  ``ResNet18_TinyImageNet`` has
11,271,432 parameters (the CIFAR resnet18 with a 200-way classifier)."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from models import register
from models.resnet import BasicBlock, Bottleneck, ResNet

_DEPTHS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "ResNet18_TinyImageNet": (BasicBlock, (2, 2, 2, 2)),
    "ResNet34_TinyImageNet": (BasicBlock, (3, 4, 6, 3)),
    "ResNet50_TinyImageNet": (Bottleneck, (3, 4, 6, 3)),
}


def _make_builder(name: str) -> Callable[..., nn.Module]:
    block, blocks = _DEPTHS[name]

    def builder(num_classes: int = 200, input_shape: Sequence[int] = (3, 64, 64)) -> nn.Module:
        return ResNet(block, blocks, num_classes=num_classes, in_channels=input_shape[0])

    builder.__name__ = name.lower()
    builder.__doc__ = (f"{name}: CIFAR-style ResNet ({blocks} {block.__name__}s, 3x3 stem, no max-pool) for "
                       "64x64 TinyImageNet inputs, 200 classes by default.")
    return builder


for _name in _DEPTHS:
    register(_name)(_make_builder(_name))
