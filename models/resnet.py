"""CIFAR-style ResNets (He et al., 2016) as in the paper's code: 3x3 stem, no max-pool.

Global average pooling is adaptive, so any input size >= 1 pixel after three stride-2 stages works
(e.g. 8x8 digits).  Parameter counts with 10 classes: resnet18 11,173,962; resnet34 21,282,122;
resnet50 23,520,842.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models import register


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block: type[nn.Module], num_blocks: Sequence[int], num_classes: int = 10,
                 in_channels: int = 3, pooling: str = "adaptive") -> None:
        super().__init__()
        if pooling not in ("adaptive", "official"):
            raise ValueError(f"pooling must be 'adaptive' or 'official', got {pooling!r}")
        self.pooling = pooling
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)  # type: ignore[attr-defined]

    def _make_layer(self, block: type[nn.Module], planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion  # type: ignore[attr-defined]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.pooling == "official":  # the official code's F.avg_pool2d(out, 4): the whole 4x4 map at 32x32
            return self.linear(torch.flatten(F.avg_pool2d(out, out.shape[-2:]), 1))
        return self.linear(torch.flatten(self.pool(out), 1))


def register_resnets(depths: dict[str, tuple[type[nn.Module], tuple[int, ...]]], *, num_classes: int,
                     input_shape: tuple[int, ...], doc: str) -> None:
    """Register a builder of :class:`ResNet` under each name of ``depths`` (name -> (block, blocks per
    stage)) with these default ``num_classes`` / ``input_shape``.  The builder's ``__name__`` is the
    lower-cased name and its docstring ``doc`` formatted with ``name``, ``blocks`` and ``block`` (the
    block class's name)."""
    for name, (block, blocks) in depths.items():
        register(name)(_builder(name, block, blocks, num_classes, input_shape, doc))


def _builder(name: str, block: type[nn.Module], blocks: tuple[int, ...], default_classes: int,
             default_shape: tuple[int, ...], doc: str) -> Callable[..., nn.Module]:
    def builder(num_classes: int = default_classes, input_shape: Sequence[int] = default_shape,
                pooling: str = "adaptive") -> nn.Module:
        return ResNet(block, blocks, num_classes=num_classes, in_channels=input_shape[0], pooling=pooling)

    builder.__name__ = name.lower()
    builder.__doc__ = doc.format(name=name, blocks=blocks, block=block.__name__)
    return builder


register_resnets({
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}, num_classes=10, input_shape=(3, 32, 32),
    doc="CIFAR {name}: 3x3 stem, no max-pool, {blocks} {block}s, adaptive average pool.")
