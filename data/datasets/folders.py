"""Class-folder datasets: ``imagefolder`` (any ``train/`` + ``test/`` or ``val/`` tree, e.g. a user's own
data or the CIFAR-10 JPEG export) and ``imagenet`` (an existing ILSVRC-2012 ImageFolder root).

Layout: ``<folder>/train/<class>/*.jpg|png|...`` and ``<folder>/test/<class>/...`` (or ``val/``); class
names are the sorted sub-folder names of ``train/``.  ``<folder>`` is ``options.path``, relative to the
datasets root (``dataset.root``, else ``$PAI_DATASETS``, else ``./datasets``) unless absolute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

from torchvision import transforms as T

from data import register
from data.arrays import DeviceData
from data.options import RgbOptions, stat_option
from data.roots import missing_error
from data.transforms import crop_flip_transforms
from data.image_cache import channel_stats, materialise
from data.image_files import FitSquare, SampleDataset, find_classes, scan
from data.base import DatasetSource, DataSplits
from utils.schema import Problem, option

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageFolderOptions(RgbOptions):
    path: str = option("", "dataset folder holding train/ and test/ (or val/); relative to the datasets root "
                           "unless absolute (required)")
    image_size: int = option(32, "side of the square network input in pixels", min=1)
    augment: Literal["cifar", "imagenet", "none"] = option(
        "cifar", "training augmentation: 'cifar' = random crop with zero padding + flip (images first resized "
                 "and centre-cropped to image_size); 'imagenet' = RandomResizedCrop + flip; 'none'")
    padding: int = option(4, "zero padding of the 'cifar' random crop", min=0)
    test_split: Literal["auto", "test", "val"] = option("auto", "evaluation folder: test/, val/, or 'auto' "
                                                                 "(test/ if present, else val/)")
    mean: Optional[list[float]] = stat_option("mean", "computed from train/, cached")
    std: Optional[list[float]] = stat_option("std", "computed from train/, cached")

    def check(self, path: str, problems: list[Problem]) -> None:
        if not self.path:
            problems.append(Problem(f"{path}.path", "required: the folder holding train/ and test/ (or val/)"))
        super().check(path, problems)


def transforms_for(augment: str, size: int, padding: int, mean, std) -> tuple[Callable, Callable, Callable]:
    """(train transform, eval transform, un-normalised eval view used for statistics)."""
    if augment == "imagenet":
        view = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size)])
        norm = [T.ToTensor(), T.Normalize(mean, std)]
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm]), T.Compose([view, *norm]), view
    view = FitSquare(size)
    return (*crop_flip_transforms(size, mean, std, padding, augment == "cifar", view=view), view)


def folder_splits(name: str, folder: Path, eval_dirs: list[str], *, size: int, augment: str, padding: int,
                  mean: Optional[list[float]], std: Optional[list[float]], how: str,
                  num_classes: Optional[int] = None) -> DataSplits:
    """Build the splits of a ``train/`` + eval-folder tree (shared by imagefolder and imagenet)."""
    train_dir = folder / "train"
    eval_dir = next((folder / d for d in eval_dirs if (folder / d).is_dir()), None)
    if not train_dir.is_dir() or eval_dir is None:
        looked = [str(train_dir) + "/<class>/<image>"] + [str(folder / d) + "/<class>/<image>" for d in eval_dirs]
        raise missing_error(name, looked, how)
    classes = find_classes(train_dir)
    if not classes:
        raise missing_error(name, [str(train_dir) + "/<class>/<image>"], how, "train/ has no class folders")
    if num_classes is not None and len(classes) != num_classes:
        raise ValueError(f"dataset '{name}': {train_dir} has {len(classes)} class folders, expected {num_classes}")
    idx = {c: i for i, c in enumerate(classes)}
    train_samples, eval_samples = scan(train_dir, idx), scan(eval_dir, idx)
    extra = sorted(set(find_classes(eval_dir)) - set(classes))
    if extra:
        raise ValueError(f"dataset '{name}': {eval_dir} has class folders missing from train/: {extra[:5]}")
    if not train_samples or not eval_samples:
        empty = train_dir if not train_samples else eval_dir
        raise missing_error(name, [str(empty) + "/<class>/<image>"], how, f"no image files under {empty}")
    if mean is None or std is None:
        _, _, view = transforms_for(augment, size, padding, (0, 0, 0), (1, 1, 1))
        key = f"{augment}-{size}"
        auto_mean, auto_std = channel_stats(train_samples, view, folder, key)
        mean = list(mean or auto_mean)
        std = list(std or auto_std)
    train_tf, eval_tf, _ = transforms_for(augment, size, padding, mean, std)
    train_set = SampleDataset(train_samples, train_tf)

    device_data = None
    if augment in ("cifar", "none"):
        def device_data() -> DeviceData:
            x_train, y_train = materialise(train_samples, size, folder, "train")
            x_test, y_test = materialise(eval_samples, size, folder, eval_dir.name)
            return DeviceData(x_train, y_train, x_test, y_test, tuple(mean), tuple(std),
                              padding=padding if augment == "cifar" else 0, flip=augment == "cifar")

    return DataSplits(train=train_set, train_eval=SampleDataset(train_samples, eval_tf),
                      test=SampleDataset(eval_samples, eval_tf), train_targets=train_set.targets,
                      num_classes=len(classes), input_shape=(3, size, size), device_data=device_data)


@register("imagefolder")
class ImageFolderData(DatasetSource):
    """Any ``train/`` + ``test/`` (or ``val/``) tree of class folders; ``num_classes`` and the input shape
    are known only after reading it (so ``validate`` does not build the model for it)."""

    Options = ImageFolderOptions

    def folder(self) -> Path:
        p = Path(self.options.path).expanduser()
        return p if p.is_absolute() else self.root / p

    def load(self) -> DataSplits:
        o = self.options
        folder = self.folder()
        eval_dirs = ["test", "val"] if o.test_split == "auto" else [o.test_split]
        how = (f"put the images in {folder}/train/<class>/ and {folder}/{eval_dirs[0]}/<class>/ "
               "(set dataset.options.path to the folder, absolute or relative to the datasets root)")
        return folder_splits("imagefolder", folder, eval_dirs, size=o.image_size, augment=o.augment,
                             padding=o.padding, mean=o.mean, std=o.std, how=how)


@dataclass
class ImageNetOptions(RgbOptions):
    path: str = option("imagenet", "ImageNet folder with train/ and val/ class folders; relative to the "
                                   "datasets root unless absolute")
    image_size: int = option(224, "training crop / evaluation centre crop (evaluation resizes to size*256/224)",
                             min=1)
    mean: Optional[list[float]] = stat_option("mean", "the usual ImageNet constants")
    std: Optional[list[float]] = stat_option("std", "the usual ImageNet constants")


@register("imagenet")
class ImageNet(DatasetSource):
    """ILSVRC-2012 from an existing ImageFolder root (never downloaded: the licence requires a manual
    download).  Training: RandomResizedCrop(224) + flip; evaluation: Resize(256) + CenterCrop(224)."""

    Options = ImageNetOptions
    num_classes = 1000
    input_shape = (3, 224, 224)

    def load(self) -> DataSplits:
        o = self.options
        p = Path(o.path).expanduser()
        folder = p if p.is_absolute() else self.root / p
        how = (f"download ILSVRC-2012 from https://image-net.org (registration required) and arrange it as "
               f"{folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG (validation images sorted into "
               "class folders)")
        return folder_splits("imagenet", folder, ["val"], size=o.image_size, augment="imagenet", padding=0,
                             mean=o.mean or list(IMAGENET_MEAN), std=o.std or list(IMAGENET_STD), how=how)
