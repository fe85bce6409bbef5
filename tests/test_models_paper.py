"""Every paper model: parameter count (the paper's code / torchvision) and one forward/backward pass."""

from __future__ import annotations

import pytest
import torch

import compressors
import models


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _vit_small_count(classes: int, dim: int = 384, depth: int = 12, mlp: int = 1536, patch: int = 4,
                     size: int = 32) -> int:
    """ViT-S parameter count written out: patch conv, class token, positions, blocks, final norm, head."""
    tokens = (size // patch) ** 2 + 1
    block = 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + 2 * dim + (dim * mlp + mlp) + (mlp * dim + dim)
    return (3 * patch * patch * dim + dim) + dim + tokens * dim + depth * block + 2 * dim + (dim * classes + classes)


# name, classes, build shape, forward input shape, batch, expected parameter count (None: not in the issue)
MODELS = [
    ("resnet18", 10, (3, 32, 32), (3, 8, 8), 2, 11_173_962),
    ("resnet34", 10, (3, 32, 32), (3, 8, 8), 2, 21_282_122),
    ("resnet50", 10, (3, 32, 32), (3, 8, 8), 2, 23_520_842),
    ("resnet101", 10, (3, 32, 32), (3, 8, 8), 2, None),
    ("resnet152", 10, (3, 32, 32), (3, 8, 8), 2, None),
    ("VGG11", 10, (3, 32, 32), (3, 32, 32), 2, 9_231_114),
    ("VGG13", 10, (3, 32, 32), (3, 32, 32), 2, 9_416_010),
    ("VGG16", 10, (3, 32, 32), (3, 32, 32), 2, 14_728_266),
    ("VGG19", 10, (3, 32, 32), (3, 32, 32), 2, 20_040_522),
    ("ResNet18_TinyImageNet", 200, (3, 64, 64), (3, 64, 64), 2, 11_271_432),
    # the CIFAR architectures with a 200-way classifier: (512 or 2048 + 1) * 190 more than with 10 classes
    ("ResNet34_TinyImageNet", 200, (3, 64, 64), (3, 16, 16), 2, 21_282_122 + 513 * 190),
    ("ResNet50_TinyImageNet", 200, (3, 64, 64), (3, 16, 16), 2, 23_520_842 + 2049 * 190),
    ("vit_small", 10, (3, 32, 32), (3, 32, 32), 2, _vit_small_count(10)),
    ("vit_b_16", 1000, (3, 224, 224), (3, 224, 224), 1, 86_567_656),  # torchvision's ViT-B/16
    ("resnet50_imagenet", 1000, (3, 224, 224), (3, 32, 32), 2, 25_557_032),  # torchvision's ResNet-50
]


@pytest.mark.parametrize("name, classes, shape, input_shape, batch, expected", MODELS, ids=[m[0] for m in MODELS])
def test_parameter_count_and_forward_backward(name: str, classes: int, shape: tuple, input_shape: tuple, batch: int,
                                              expected: int | None) -> None:
    torch.manual_seed(0)
    model = models.build(name, num_classes=classes, input_shape=shape)
    if expected is not None:
        assert _count(model) == expected
    out = model(torch.randn(batch, *input_shape))
    assert out.shape == (batch, classes) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.arange(batch) % classes).backward()
    assert all(p.grad is not None for p in model.parameters())
    weights = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    assert weights[0].grad.abs().sum() > 0 and weights[-1].grad.abs().sum() > 0  # first and last layer learn


def test_vit_small_count_is_twenty_one_million() -> None:
    assert _vit_small_count(10) == 21_342_346


def test_names_are_case_insensitive_and_classes_default_per_family() -> None:
    assert models.get("VGG19") is models.get("vgg19")
    tiny = models.get("resnet18_tinyimagenet")
    assert tiny is models.get("ResNet18_TinyImageNet")
    assert tiny(input_shape=(3, 64, 64)).linear.out_features == 200
    assert models.REGISTRY.canonical("RESNET18_TINYIMAGENET") == "ResNet18_TinyImageNet"


def test_vit_small_attention_weights_are_prunable_linear_layers() -> None:
    model = models.build("vit_small", num_classes=10, input_shape=(3, 32, 32), depth=2)
    names = compressors.prunable_names(model)
    assert "blocks.0.attn.qkv.weight" in names and "blocks.1.mlp.3.weight" in names
    assert "patch_embed.weight" in names and "head.weight" not in names


def test_vit_b_16_head_is_not_zero_unless_asked() -> None:
    torch.manual_seed(0)
    small = (3, 32, 32)  # 2x2 patches: cheap
    assert models.build("vit_b_16", num_classes=5, input_shape=small).heads.head.weight.abs().sum() > 0
    assert models.build("vit_b_16", num_classes=5, input_shape=small, zero_head=True).heads.head.weight.abs().sum() == 0


def test_models_reject_inputs_they_cannot_take() -> None:
    with pytest.raises(ValueError, match="not divisible by patch size 5"):
        models.build("vit_small", num_classes=10, input_shape=(3, 32, 32), patch_size=5)
    with pytest.raises(ValueError, match="divisible by 16"):
        models.build("vit_b_16", num_classes=10, input_shape=(3, 40, 40))
