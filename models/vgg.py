"""VGG with batch norm, CIFAR variant as in the paper's code: 3x3 convs with bias, then BN and ReLU,
max-pools, adaptive average pool to 1x1, one linear classifier.  Parameter counts with 10 classes:
VGG11 9,231,114; VGG16 14,728,266; VGG19 20,040,522."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from models import register

_CFG: dict[str, list[Union[int, str]]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, cfg: Sequence[Union[int, str]], num_classes: int = 10, in_channels: int = 3,
                 input_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = input_size
        for v in cfg:
            if v == "M":
                if size >= 2:  # small inputs (e.g. 8x8 digits) skip the pools that would empty the map
                    layers.append(nn.MaxPool2d(2, 2))
                    size //= 2
                continue
            layers += [nn.Conv2d(in_channels, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
            in_channels = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    def official_parameter_names(self) -> dict[str, str]:
        """``{our name: the official code's name}``: its VGG names the i-th module of ``features``
        ``conv_i`` / ``bn_i`` and the classifier ``linear`` (parameters are created in the same order, so seed
        S gives the same values).  Used by ``compressor.prunable: "official_names"``."""
        out = {}
        for i, module in enumerate(self.features):
            kind = "conv" if isinstance(module, nn.Conv2d) else "bn" if isinstance(module, nn.BatchNorm2d) else None
            for pname, _ in (module.named_parameters() if kind else ()):
                out[f"features.{i}.{pname}"] = f"features.{kind}_{i}.{pname}"
        for pname, _ in self.classifier.named_parameters():
            out[f"classifier.{pname}"] = f"linear.{pname}"
        return out


def _make_builder(name: str):
    def builder(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
        return VGG(_CFG[name], num_classes=num_classes, in_channels=input_shape[0], input_size=min(input_shape[1:]))

    builder.__name__ = name
    builder.__doc__ = f"{name.upper()} with batch norm (CIFAR variant)."
    return builder


for _name in _CFG:
    register(_name)(_make_builder(_name))
