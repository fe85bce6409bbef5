"""Small models for the offline digits dataset and for tests."""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from models import register


@register("digits_cnn", "small_cnn")
def digits_cnn(num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8), width: int = 32) -> nn.Module:
    """Three 3x3 conv-BN-ReLU blocks (width, 2*width, 2*width), one max-pool, global average pool,
    linear classifier.  About 47k parameters at width 32; trains on digits in seconds on a CPU."""
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


@register("mlp")
def mlp(num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8), hidden: Sequence[int] = (256, 128)) -> nn.Module:
    """Fully connected ReLU network on the flattened input."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
