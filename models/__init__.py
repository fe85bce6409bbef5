"""Models: a registry of builders ``fn(num_classes, input_shape, **options) -> nn.Module``.

``models.build("VGG19", num_classes=10)`` builds any registered model (names are case-insensitive).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from utils.registry import Registry

ModelBuilder = Callable[..., nn.Module]
REGISTRY: Registry[ModelBuilder] = Registry("model", plugins=__name__)
register = REGISTRY.register
discover = REGISTRY.discover
get = REGISTRY.get
names = REGISTRY.names


def build(name: str, num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), **options: Any) -> nn.Module:
    """Build a registered model; ``options`` are the builder's keyword arguments (``model.options``)."""
    builder = get(name)
    try:
        return builder(num_classes=num_classes, input_shape=tuple(input_shape), **options)
    except TypeError as exc:  # an unknown model option
        raise TypeError(f"model '{name}': {exc}") from None


__all__ = ["REGISTRY", "register", "build", "get", "names", "discover"]
