"""What a dataset provides: train (augmented), train_eval (same samples, eval transform), test, labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import numpy as np
from torch.utils.data import Dataset

from data._common import resolve_root
from utils.typed import NoOptions, parse_strict

if TYPE_CHECKING:
    from data._common import DeviceData


@dataclass
class DataSplits:
    """The pieces every dataset hands to the loader builder.

    ``train`` and ``train_eval`` index the same samples (the first with training augmentation, the
    second with the evaluation transform, used for held-out validation and mask data);
    ``train_targets`` are their labels, used for stratified splits and per-class mask sampling.
    """

    train: Dataset
    train_eval: Dataset
    test: Dataset
    train_targets: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    device_data: Optional[Callable[[], DeviceData]] = None
    """For the device-resident loader (``dataset.loader: "device"``): a function returning the uint8
    images and the augmentation recipe; None when the dataset cannot be held as uint8 tensors."""


class DatasetSource:
    """Base class of registered datasets.

    Subclasses set ``Options`` (a dataclass of dataset-specific options, validated from
    ``dataset.options``), the class attributes ``num_classes`` and ``input_shape`` when they are known
    without reading data (used by ``validate`` to build the model), and implement :meth:`load`.
    """

    Options: ClassVar[type] = NoOptions
    num_classes: ClassVar[Optional[int]] = None
    input_shape: ClassVar[Optional[tuple[int, ...]]] = None

    def __init__(self, root: Optional[str] = "./datasets", download: bool = True, **options: Any) -> None:
        self.root: Path = resolve_root(root)
        self.download = download
        self.options = parse_strict(self.Options, options, "dataset.options")

    def load(self) -> DataSplits:  # pragma: no cover - abstract
        raise NotImplementedError("abstract: subclasses implement load()")
