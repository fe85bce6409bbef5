"""Wide Residual Networks, Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016).

WRN-d-k (the paper's Table 1, blocks B(3,3)): a 3x3 convolution with 16 filters, three stages of
``n = (d - 4) / 6`` pre-activation blocks of widths 16k, 32k and 64k (strides 1, 2, 2), a final
BN-ReLU, global average pooling and one fully connected layer.  A block (the paper's Fig. 1(d), the
pre-activation unit of He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016) computes::

    a = relu(bn1(x));  out = conv2(dropout(relu(bn2(conv1(a)))));  return out + shortcut

where the shortcut is ``x`` when the block keeps its shape, else a 1x1 convolution with the block's
stride applied to ``a`` (the pre-activated input, as the authors' ``models/wide-resnet.lua``, whose
``wide_basic`` puts that BN-ReLU in front of both branches when the widths differ).  Dropout sits
between the two convolutions, after the ReLU (the paper's Sec. 2.4); its rate is the option ``dropout``,
0 by default as in the authors' ``train.lua`` (the paper's dropout results use 0.3).  Convolutions have
no bias (the authors' code removes them, ``utils.DisableBias``); the classifier has one.  The paper's
8x8 average pool is adaptive here (the same on 32x32 inputs; other input sizes work too).  Weights keep
PyTorch's default initialisation, as every other model of this registry (the authors' code draws
convolutions from N(0, 2 / (3·3·c_in)), ``utils.MSRinit``).

Parameter counts with 10 classes and 3 input channels, against the paper's Table 4
(test errors of wide networks on CIFAR, with each network's parameter count):

=========== =========== ==========
model       exact       paper
=========== =========== ==========
wrn_28_10   36,479,194  36.5M
wrn_16_8    10,961,370  11.0M
wrn_40_4    8,949,210   8.9M
wrn_28_2    1,467,610   (not in its tables)
wrn 40-1    563,930     0.6M
wrn 40-2    2,243,546   2.2M
wrn 40-8    35,748,314  35.7M
wrn 22-8    17,158,106  17.2M
=========== =========== ==========
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from models import register
from utils.schema import Problem, option, parse_strict

BASE_WIDTHS = (16, 32, 64)  # times widen_factor; the stem has 16 filters (Table 1)


@dataclass
class WideResNetOptions:
    depth: int = option(28, "total depth d = 6n+4 (n blocks per stage); default 28: the paper's WRN-28-10", min=10)
    widen_factor: int = option(10, "widening factor k (stage widths 16k, 32k, 64k); default 10: WRN-28-10",
                               min=1)
    dropout: float = option(0.0, "dropout rate between the two convolutions of a block (0: none, the "
                                 "authors' train.lua default; the paper's dropout runs use 0.3)",
                            min=0, max=1, max_exclusive=True)

    def check(self, path: str, problems: list[Problem]) -> None:
        if (self.depth - 4) % 6:
            near = self.depth - (self.depth - 4) % 6
            problems.append(Problem(f"{path}.depth", f"{self.depth} is not 6n+4; valid: 10, 16, 22, 28, 34, 40, "
                                                     f"... (nearest below: {near})"))


class WideBasic(nn.Module):
    """Pre-activation block B(3,3) with dropout between the convolutions (see the module docstring)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(x))
        out = self.conv2(self.dropout(torch.relu(self.bn2(self.conv1(a)))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` (see the module docstring); the classifier is ``linear``."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, BASE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        stages, planes = [], BASE_WIDTHS[0]
        for i, base in enumerate(BASE_WIDTHS):
            width, blocks = base * widen_factor, []
            for j in range(n):
                blocks.append(WideBasic(planes, width, 2 if i > 0 and j == 0 else 1, dropout))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = torch.relu(self.bn(out))
        return self.linear(torch.flatten(self.pool(out), 1))


@register("wrn", "wide_resnet")
def wrn(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), depth: int = 28, widen_factor: int = 10,
        dropout: float = 0.0) -> nn.Module:
    """Wide ResNet WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis 2016, Table 1; pre-activation
    blocks, dropout between the convolutions).  Defaults: WRN-28-10, 36,479,194 parameters with 10 classes
    (the paper's 36.5M); dropout 0 (the authors' train.lua)."""
    opts = parse_strict(WideResNetOptions, {"depth": depth, "widen_factor": widen_factor, "dropout": dropout},
                        "model.options")
    return WideResNet(opts.depth, opts.widen_factor, num_classes=num_classes, in_channels=input_shape[0],
                      dropout=opts.dropout)


def _fixed(depth: int, k: int, count: str, paper: str):
    def builder(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), dropout: float = 0.0) -> nn.Module:
        return wrn(num_classes=num_classes, input_shape=input_shape, depth=depth, widen_factor=k, dropout=dropout)

    builder.__name__ = f"wrn_{depth}_{k}"
    builder.__doc__ = (f"WRN-{depth}-{k} (Zagoruyko & Komodakis 2016): {count} parameters with 10 classes "
                       f"({paper}).  Option ``dropout`` (default 0).")
    return builder


for _depth, _k, _count, _paper in ((28, 10, "36,479,194", "the paper's Table 4: 36.5M"),
                                   (16, 8, "10,961,370", "the paper's Table 4: 11.0M"),
                                   (40, 4, "8,949,210", "the paper's Table 4: 8.9M"),
                                   (28, 2, "1,467,610", "not in the paper's tables")):
    register(f"wrn_{_depth}_{_k}")(_fixed(_depth, _k, _count, _paper))
