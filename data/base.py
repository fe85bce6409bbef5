"""What a dataset provides: train (augmented), train_eval (same samples, eval transform), test, labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from data.roots import resolve_root
from utils.schema import NoOptions, parse_strict

if TYPE_CHECKING:
    from data.arrays import DeviceData


NORMALIZATIONS = ("measured", "official")


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
    # The official second-order PaI code's normalisation constants (None: it does not load this dataset)
    # and whether its training loader reshuffles every epoch.
    official_mean: ClassVar[Optional[tuple[float, ...]]] = None
    official_std: ClassVar[Optional[tuple[float, ...]]] = None
    official_shuffle: ClassVar[bool] = False

    def __init__(self, root: Optional[str] = "./datasets", download: bool = True, normalization: str = "measured",
                 **options: Any) -> None:
        self.root: Path = resolve_root(root)
        self.download = download
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"dataset.normalization: invalid value {normalization!r}; valid: {NORMALIZATIONS}")
        if normalization == "official" and self.official_std is None:
            raise ValueError(f"dataset.normalization: the official code has no constants for {type(self).__name__}; "
                             "valid: 'measured'")
        self.normalization = normalization
        self.options = parse_strict(self.Options, options, "dataset.options")

    @classmethod
    def official_settings(cls) -> dict[str, Any]:
        """This dataset's values of the ``dataset`` switches under ``general.compat: "official"``."""
        return {"normalization": "official" if cls.official_std is not None else "measured",
                "shuffle": cls.official_shuffle}

    def normalisation(self, mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                      measured: tuple[tuple[float, ...], tuple[float, ...]]) -> tuple[tuple[float, ...], ...]:
        """(mean, std): the ``dataset.options`` values when given, else the official constants under
        ``normalization="official"``, else ``measured``."""
        official = self.normalization == "official"
        base_mean = self.official_mean if official and self.official_mean else measured[0]
        base_std = self.official_std if official and self.official_std else measured[1]
        return (tuple(mean) if mean else tuple(base_mean)), (tuple(std) if std else tuple(base_std))

    def load(self) -> DataSplits:  # pragma: no cover - abstract
        raise NotImplementedError("abstract: subclasses implement load()")
