"""scikit-learn's bundled 8x8 handwritten digits: 1,797 greyscale images, 10 classes, no download."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from data import register
from data.base import DatasetSource, DataSplits
from utils.schema import option


@dataclass
class DigitsOptions:
    test_fraction: float = option(0.2, "stratified fraction of the 1,797 images held out as the test set",
                                  min=0, max=1, min_exclusive=True, max_exclusive=True)
    split_seed: int = option(0, "seed of the train/test split (fixed across run seeds, so all runs share "
                                "one test set; scikit-learn takes seeds below 2**32)", min=0, max=2**32 - 1)


@register("digits")
class Digits(DatasetSource):
    """Offline default dataset.  Pixels (0..16) are scaled to [0, 1] and standardised with the
    training-set mean and standard deviation; no augmentation."""

    Options = DigitsOptions
    num_classes = 10
    input_shape = (1, 8, 8)

    def load(self) -> DataSplits:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        images = bunch.images.astype(np.float32) / 16.0
        targets = bunch.target.astype(np.int64)
        idx_train, idx_test = train_test_split(
            np.arange(len(targets)), test_size=self.options.test_fraction, stratify=targets,
            random_state=self.options.split_seed,
        )
        mean, std = images[idx_train].mean(), images[idx_train].std()
        x = torch.from_numpy((images - mean) / std).unsqueeze(1)
        y = torch.from_numpy(targets)
        train = TensorDataset(x[idx_train], y[idx_train])
        test = TensorDataset(x[idx_test], y[idx_test])
        return DataSplits(train=train, train_eval=train, test=test, train_targets=targets[idx_train],
                          num_classes=10, input_shape=(1, 8, 8))
