"""ImageNet-size models from torchvision, randomly initialised (no weight download): ``vit_b_16``
(86,567,656 parameters with 1000 classes) and ``resnet50_imagenet`` (25,557,032 with 1000 classes).

Note for pruning: torchvision's ViT computes q, k, v with ``nn.MultiheadAttention`` whose input
projection is a bare parameter (``in_proj_weight``), not a Linear module; criteria that prune Conv and
Linear weights prune its out-projection and MLP layers but not q/k/v.  ``vit_small`` (models/vit.py)
uses explicit Linear layers throughout.
"""

from __future__ import annotations

from typing import Sequence

import torchvision
from torch import nn

from models import register


@register("vit_b_16")
def vit_b_16(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224), dropout: float = 0.0,
             attention_dropout: float = 0.0, zero_head: bool = False) -> nn.Module:
    """torchvision ViT-B/16 (12 layers, width 768, 12 heads, MLP 3072), random init; the image size is the
    input's (must be divisible by 16).

    torchvision initialises the classifier to zero, which makes every gradient of the rest of the network
    zero at initialisation, so gradient-based pruning criteria would score nothing; unless ``zero_head``
    is set, the head is re-initialised with a truncated normal (std 0.02) and zero bias instead."""
    c, h, w = input_shape
    if h != w or h % 16 or c != 3:
        raise ValueError(f"vit_b_16 needs square 3-channel inputs with a side divisible by 16, "
                         f"got {tuple(input_shape)}")
    model = torchvision.models.vit_b_16(weights=None, num_classes=num_classes, image_size=h, dropout=dropout,
                                        attention_dropout=attention_dropout)
    if not zero_head:
        head = model.heads.head
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
    return model


@register("resnet50_imagenet")
def resnet50_imagenet(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224),
                      zero_init_residual: bool = False) -> nn.Module:
    """torchvision ResNet-50 (7x7 stride-2 stem, max-pool, Bottleneck 3-4-6-3), random init."""
    if input_shape[0] != 3:
        raise ValueError(f"resnet50_imagenet needs 3-channel inputs, got {tuple(input_shape)}")
    return torchvision.models.resnet50(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)
