"""TinyImageNet ResNets as in the paper's code: the CIFAR ResNet (3x3 stride-1 stem, no max-pool, four
stages, adaptive average pool) with 200 outputs for 64x64 inputs.  ``ResNet18_TinyImageNet`` has
11,271,432 parameters (the CIFAR resnet18 with a 200-way classifier)."""

from __future__ import annotations

from models.resnet import BasicBlock, Bottleneck, register_resnets

register_resnets({
    "ResNet18_TinyImageNet": (BasicBlock, (2, 2, 2, 2)),
    "ResNet34_TinyImageNet": (BasicBlock, (3, 4, 6, 3)),
    "ResNet50_TinyImageNet": (Bottleneck, (3, 4, 6, 3)),
}, num_classes=200, input_shape=(3, 64, 64),
    doc="{name}: CIFAR-style ResNet ({blocks} {block}s, 3x3 stem, no max-pool) for 64x64 TinyImageNet inputs, "
        "200 classes by default.")
