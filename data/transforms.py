"""The crop / flip / normalise transforms of the RGB datasets (torchvision)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence


def crop_flip_transforms(size: int, mean: Sequence[float], std: Sequence[float], padding: int, augment: bool,
                         view: Optional[Callable] = None) -> tuple[Callable, Callable]:
    """(train, eval) torchvision transforms: ``view`` first when given (e.g. a resize to ``size``), then
    for training only ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip`` when ``augment``, then
    ``ToTensor`` + ``Normalize(mean, std)``."""
    from torchvision import transforms as T

    first = [view] if view is not None else []
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    aug = [T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip()] if augment else []
    return T.Compose(first + aug + norm), T.Compose(first + norm)
