"""CIFAR-10 and CIFAR-100 through torchvision (python pickles, md5-checked), held in memory as uint8.

Files: ``<root>/cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta) and
``<root>/cifar-100-python/`` (train, test, meta), downloaded from the official site when missing and
``dataset.download`` is true.  Training augmentation: random 32x32 crop after zero padding of 4 pixels
and a horizontal flip; then per-dataset normalisation.  The device-resident loader is supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
from torchvision import datasets as tvd

from data import register
from data.arrays import ArrayDataset, DeviceData, hwc_to_nchw
from data.options import CropFlipOptions
from data.roots import missing_error
from data.transforms import crop_flip_transforms
from data.base import DatasetSource, DataSplits


@dataclass
class CifarOptions(CropFlipOptions):
    """Options of cifar10 / cifar100: augment, padding (of the 32x32 crop), mean, std."""


def cifar_transforms(mean: Sequence[float], std: Sequence[float], padding: int = 4,
                     augment: bool = True) -> tuple[Callable, Callable]:
    """(train, eval) torchvision transforms of the CIFAR datasets: RandomCrop(32, padding) + flip, then
    ToTensor + Normalize; evaluation only normalises."""
    return crop_flip_transforms(32, mean, std, padding, augment)


class _Cifar(DatasetSource):
    Options = CifarOptions
    input_shape = (3, 32, 32)
    tv_class: ClassVar[type] = tvd.CIFAR10
    display: ClassVar[str] = "cifar10"
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()

    def _expected_files(self) -> list[str]:
        tv = self.tv_class
        folder = self.root / tv.base_folder
        names = [f for f, _ in tv.train_list + tv.test_list] + [tv.meta["filename"]]
        return [str(folder / n) for n in names]

    def _how(self) -> str:
        tv = self.tv_class
        return (f"set dataset.download to true (needs internet), or download {tv.url} yourself and extract it "
                f"into {self.root} so that {self.root / tv.base_folder} holds the files above")

    def _open(self, train: bool) -> tvd.CIFAR10:
        tv = self.tv_class
        try:
            return tv(str(self.root), train=train, download=self.download)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            cause = (f"{exc} (download was {'on' if self.download else 'off'}; files missing or failing "
                     "the md5 check)")
            raise missing_error(self.display, self._expected_files(), self._how(), cause) from None
        except OSError as exc:  # urllib errors are OSErrors
            reason = getattr(exc, "reason", None) or exc
            raise missing_error(self.display, self._expected_files(), self._how(),
                                f"download of {tv.url} failed: {reason}") from None

    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.normalisation(self.options.mean, self.options.std, (self.mean, self.std))

    def load(self) -> DataSplits:
        train_set, test_set = self._open(True), self._open(False)
        mean, std = self._stats()
        train_tf, eval_tf = cifar_transforms(mean, std, self.options.padding, self.options.augment)
        x_train, y_train = np.asarray(train_set.data), np.asarray(train_set.targets, dtype=np.int64)
        x_test, y_test = np.asarray(test_set.data), np.asarray(test_set.targets, dtype=np.int64)

        def device_data() -> DeviceData:
            import torch

            return DeviceData(hwc_to_nchw(x_train), torch.from_numpy(y_train), hwc_to_nchw(x_test),
                              torch.from_numpy(y_test), mean, std,
                              padding=self.options.padding if self.options.augment else 0,
                              flip=self.options.augment)

        return DataSplits(
            train=ArrayDataset(x_train, y_train, train_tf), train_eval=ArrayDataset(x_train, y_train, eval_tf),
            test=ArrayDataset(x_test, y_test, eval_tf), train_targets=y_train, num_classes=self.num_classes,
            input_shape=self.input_shape, device_data=device_data)


@register("cifar10")
class Cifar10(_Cifar):
    """CIFAR-10: 50,000 train / 10,000 test 32x32 colour images, 10 classes."""

    num_classes = 10
    tv_class = tvd.CIFAR10
    display = "cifar10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    official_mean = (0.4914, 0.4822, 0.4465)
    official_std = (0.2023, 0.1994, 0.2010)


@register("cifar100")
class Cifar100(_Cifar):
    """CIFAR-100: 50,000 train / 10,000 test 32x32 colour images, 100 classes."""

    num_classes = 100
    tv_class = tvd.CIFAR100
    display = "cifar100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    official_mean = (0.5071, 0.4867, 0.4408)
    official_std = (0.2675, 0.2565, 0.2761)
