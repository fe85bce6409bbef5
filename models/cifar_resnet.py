"""The CIFAR-10 ResNets of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), Sec. 4.2.

The architecture as the paper states it: a 3x3 convolution with 16 filters, then three stages of ``n``
basic blocks (two 3x3 conv-BN layers each, ReLU after the first and after the addition; 16, 32 and 64
filters on maps of 32x32, 16x16 and 8x8 for CIFAR inputs), the first block of stages 2 and 3 subsampling
with stride 2, global average pooling and one fully connected layer: ``6n + 2`` weighted layers.
Convolutions have no bias (each is followed by batch norm); the classifier has one.

The shortcut where a block changes shape is the model option ``shortcut``:

- ``"A"`` (default: the paper's CIFAR choice, "we use identity shortcuts in all cases (i.e., option A)"):
  parameter-free; the input is subsampled with stride 2 (every other row and column) and zero channels are
  appended after its own (the paper does not say where the zeros go; appending follows fb.resnet.torch's
  shortcut type A, ``models/resnet.lua``; the position is a relabelling of channels, so it does not change
  what the network can compute or the distribution of the initial network).
- ``"B"``: the paper's option B (Sec. 3.3, used for its ImageNet models): a 1x1 convolution with stride 2
  and batch norm where the shape changes, identity elsewhere.

Parameter counts with 10 classes and 3 input channels (option A; option B adds 2,752: the two projections
16->32 and 32->64 with their BN scales and shifts), against the paper's Table 6:

========== ===== =========== ===========
model      depth exact (A)   Table 6
========== ===== =========== ===========
resnet20   20    269,722     0.27M
resnet32   32    464,154     0.46M
resnet44   44    658,586     0.66M
resnet56   56    853,018     0.85M
resnet110  110   1,727,962   1.7M
========== ===== =========== ===========

Global average pooling is adaptive (one value per channel whatever the map size), so inputs other than
32x32 work: 8x8 digits give maps of 8, 4 and 2.  Weights keep PyTorch's default initialisation, as every
other model of this registry.  These are not the ImageNet-style ``resnet18``...``resnet152`` of
``models/resnet.py`` (64-512 channels, four stages): those names are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models import register
from utils.schema import Problem, option, parse_strict

STAGE_WIDTHS = (16, 32, 64)  # He et al. 2016, Sec. 4.2: "The numbers of filters are {16, 32, 64}"


@dataclass
class CifarResNetOptions:
    depth: int = option(20, "weighted layers, 6n+2 (n basic blocks per stage; He et al. Sec. 4.2 use 20, 32, "
                            "44, 56, 110, 1202)", min=8)
    shortcut: Literal["A", "B"] = option("A", "shortcut where a block changes shape: 'A' zero-padded identity "
                                              "with stride-2 subsampling, parameter-free (the paper's CIFAR "
                                              "choice); 'B' 1x1 convolution + BN projection")

    def check(self, path: str, problems: list[Problem]) -> None:
        if (self.depth - 2) % 6:
            near = self.depth - (self.depth - 2) % 6
            problems.append(Problem(f"{path}.depth", f"{self.depth} is not 6n+2; valid: 8, 14, 20, 26, 32, ... "
                                                     f"(nearest below: {near})"))


class ZeroPadShortcut(nn.Module):
    """Shortcut option A (He et al. 2016, Sec. 3.3): ``x[:, :, ::stride, ::stride]`` followed by
    ``out_planes - in_planes`` zero channels appended after the input's channels.  No parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option A cannot reduce channels ({in_planes} -> {out_planes})")
        self.stride, self.extra = stride, out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers, ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` (He et al. Fig. 2)."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = (ZeroPadShortcut(in_planes, planes, stride) if shortcut == "A" else
                             nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(planes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 stem (16), three stages of ``blocks`` basic blocks (16, 32, 64; stride 1, 2, 2), global average
    pool, linear classifier ``linear``."""

    def __init__(self, blocks: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        stages, planes = [], STAGE_WIDTHS[0]
        for i, width in enumerate(STAGE_WIDTHS):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(planes, width, 2 if i > 0 and j == 0 else 1, shortcut))
                planes = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(STAGE_WIDTHS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.pool(out), 1))


@register("cifar_resnet")
def cifar_resnet(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), depth: int = 20,
                 shortcut: str = "A") -> nn.Module:
    """He et al. 2016 CIFAR ResNet of ``depth`` = 6n+2 layers (Sec. 4.2), ``shortcut`` "A" (default, the
    paper's CIFAR choice: zero-padded identity, parameter-free) or "B" (1x1 conv + BN projection where the
    shape changes).  Depth 20: 269,722 parameters with 10 classes (Table 6: 0.27M); see the module docstring."""
    opts = parse_strict(CifarResNetOptions, {"depth": depth, "shortcut": shortcut}, "model.options")
    return CifarResNet((opts.depth - 2) // 6, num_classes=num_classes, in_channels=input_shape[0],
                       shortcut=opts.shortcut)


def _fixed_depth(depth: int, count: str, table: str):
    def builder(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), shortcut: str = "A") -> nn.Module:
        return cifar_resnet(num_classes=num_classes, input_shape=input_shape, depth=depth, shortcut=shortcut)

    builder.__name__ = f"resnet{depth}"
    builder.__doc__ = (f"ResNet-{depth} for CIFAR (He et al. 2016, Sec. 4.2; n = {(depth - 2) // 6} blocks per "
                       f"stage): {count} parameters with 10 classes and option A (Table 6: {table}).  Option "
                       f"``shortcut``: \"A\" (default, zero-padded identity, parameter-free) or \"B\" (1x1 conv "
                       f"+ BN projection, 2,752 more parameters).")
    return builder


for _depth, _count, _table in ((20, "269,722", "0.27M"), (32, "464,154", "0.46M"), (44, "658,586", "0.66M"),
                               (56, "853,018", "0.85M"), (110, "1,727,962", "1.7M")):
    register(f"resnet{_depth}")(_fixed_depth(_depth, _count, _table))
