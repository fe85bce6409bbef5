"""The LeNets of the pruning literature, as SNIP (Lee et al., "SNIP: Single-shot Network Pruning based on
Connection Sensitivity", ICLR 2019, Sec. 5.1 and Table 2) uses them on MNIST.

- ``lenet_300_100``: the fully connected LeNet-300-100 (LeCun et al. 1998): 784-300-100-10 with ReLU after
  the two hidden layers; 266,610 parameters for 28x28x1 inputs and 10 classes (784·300+300 + 300·100+100 +
  100·10+10; SNIP's Table 2: 267K).  Any ``input_shape`` is flattened (8x8 digits: 64 inputs).
- ``lenet5``: LeNet-5-Caffe, the LeNet of Caffe's MNIST example (``examples/mnist/lenet_train_test.prototxt``)
  that SNIP prunes: conv 20@5x5 -> max-pool 2 -> conv 50@5x5 -> max-pool 2 -> fc 500 -> ReLU -> fc 10, no
  padding, convolutions and fully connected layers with biases.  As in Caffe's definition and in SNIP's code
  (``snip/network.py``, ``LeNet5.forward_pass``) the convolutions have **no activation**: max-pooling is the
  only non-linearity before the first fully connected layer.  431,080 parameters for 28x28x1 inputs
  (520 + 25,050 + 800·500+500 + 500·10+10; SNIP's Table 2: 431K).  The first fully connected layer's input
  size is computed from ``input_shape`` (pools round down, as SNIP's ``VALID`` pooling; Caffe rounds up,
  which differs only for odd map sizes, never on 28x28).  Options: ``padding`` (0, Caffe's and SNIP's) lets
  inputs smaller than 16x16 through (padding 2 takes 8x8 digits to 131,080 parameters); ``conv_relu``
  (false) adds a ReLU after each convolution, as many PyTorch re-implementations do.

Weights keep PyTorch's default initialisation, as every other model of this registry (SNIP's code draws
weights with TensorFlow's ``variance_scaling_initializer`` and zero biases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from models import register
from utils.schema import option, parse_strict


class LeNet300100(nn.Module):
    """784-300-100-10 fully connected network with ReLU (on the flattened input); classifier ``fc3``."""

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(x)))


@register("lenet_300_100", "lenet300")
def lenet_300_100(num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28)) -> nn.Module:
    """LeNet-300-100 (SNIP, Lee et al. 2019): 266,610 parameters for 28x28x1 inputs and 10 classes (Table 2:
    267K); any input shape is flattened."""
    return LeNet300100(math.prod(input_shape), num_classes)


@dataclass
class LeNet5Options:
    padding: int = option(0, "zero padding of both 5x5 convolutions (0: Caffe's LeNet and SNIP's code; 2 makes "
                             "8x8 inputs work)", min=0, max=16)
    conv_relu: bool = option(False, "ReLU after each convolution (false: Caffe's LeNet and SNIP's code, no "
                                    "activation there; true: as many PyTorch re-implementations)")


def _after_convs(size: int, padding: int) -> int:
    """Map size after conv 5x5 -> pool 2 -> conv 5x5 -> pool 2 (pools round down)."""
    for _ in range(2):
        size = max(size + 2 * padding - 4, 0) // 2
    return size


class LeNet5(nn.Module):
    """LeNet-5-Caffe (see the module docstring); classifier ``fc2``."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, padding: int = 0,
                 conv_relu: bool = False) -> None:
        super().__init__()
        c, h, w = input_shape
        out_h, out_w = _after_convs(h, padding), _after_convs(w, padding)
        if out_h < 1 or out_w < 1:
            smallest = next(s for s in range(1, 64) if _after_convs(s, padding) >= 1)
            raise ValueError(f"lenet5: input {h}x{w} is too small for two 5x5 convolutions and two 2x2 pools with "
                             f"padding {padding}; valid: at least {smallest}x{smallest}, or a larger "
                             f"model.options.padding (2 takes 8x8 inputs)")
        self.conv1 = nn.Conv2d(c, 20, 5, padding=padding)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=padding)
        self.pool2 = nn.MaxPool2d(2)
        self.act: nn.Module = nn.ReLU() if conv_relu else nn.Identity()
        self.fc1 = nn.Linear(50 * out_h * out_w, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act(self.conv1(x)))
        x = self.pool2(self.act(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


@register("lenet5", "lenet5_caffe")
def lenet5(num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28), padding: int = 0,
           conv_relu: bool = False) -> nn.Module:
    """LeNet-5-Caffe as SNIP prunes it (Lee et al. 2019): 431,080 parameters for 28x28x1 inputs and 10 classes
    (Table 2: 431K).  Options ``padding`` (0) and ``conv_relu`` (false); see the module docstring."""
    opts = parse_strict(LeNet5Options, {"padding": padding, "conv_relu": conv_relu}, "model.options")
    if len(input_shape) != 3:
        raise ValueError(f"lenet5: input_shape must be (channels, height, width), got {tuple(input_shape)}")
    return LeNet5(tuple(input_shape), num_classes, padding=opts.padding, conv_relu=opts.conv_relu)
