"""Images held in memory: a uint8 array dataset (as torchvision's CIFAR classes), the description of the
data the device-resident loader holds, and the layout conversion between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """Images held in memory as a uint8 array (N, H, W, C) with integer labels; each item goes through
    ``Image.fromarray`` and ``transform``, exactly like torchvision's CIFAR datasets."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], transform: Optional[Callable] = None) -> None:
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


@dataclass


class DeviceData:
    """What the device-resident loader needs: uint8 images (N, C, H, W) of train and test with their
    labels, and the augmentation recipe (random crop of the full size after zero ``padding``, optional
    horizontal flip, then ``(x / 255 - mean) / std``)."""

    train_images: torch.Tensor
    train_targets: torch.Tensor
    test_images: torch.Tensor
    test_targets: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    padding: int = 4
    flip: bool = True


def hwc_to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) numpy array -> contiguous uint8 (N, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
