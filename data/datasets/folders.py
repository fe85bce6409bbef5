"""Class-folder datasets: ``imagefolder`` (any ``train/`` + ``test/`` or ``val/`` tree, e.g. a user's own
data or the CIFAR-10 JPEG export) and ``imagenet`` (an existing ILSVRC-2012 ImageFolder root).

Layout: ``<folder>/train/<class>/*.jpg|png|...`` and ``<folder>/test/<class>/...`` (or ``val/``); class
names are the sorted sub-folder names of ``train/``.  ``<folder>`` is ``options.path``, relative to the
datasets root (``dataset.root``, else ``$PAI_DATASETS``, else ``./datasets``) unless absolute.
"""

from __future__ import annotations

import warnings
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
from data.image_files import FitSquare, Sample, SampleDataset, empty_classes, find_classes, scan
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
    empty_classes: Literal["error", "drop"] = option(
        "error", "a class folder of train/ without image files: 'error' (names it), or 'drop' it (a warning "
                 "states the folders dropped and the classes left)")

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


@dataclass
class FolderLayout:
    classes: list[str]
    train: list[Sample]
    eval: list[Sample]
    eval_dir: Path


def folder_layout(name: str, folder: Path, eval_dirs: list[str], how: str, num_classes: Optional[int] = None,
                  empty: str = "error") -> FolderLayout:
    """The classes and the (path, label) samples of a ``train/`` + eval-folder tree (no image is decoded).
    A class folder of ``train/`` without image files is an error naming it, or with ``empty="drop"`` it is
    left out (a warning names the folders and states the classes left); an eval class folder without image
    files is an error too (a warning with ``"drop"``: the class is still trained on)."""
    train_dir = folder / "train"
    eval_dir = next((folder / d for d in eval_dirs if (folder / d).is_dir()), None)
    if not train_dir.is_dir() or eval_dir is None:
        looked = [str(train_dir) + "/<class>/<image>"] + [str(folder / d) + "/<class>/<image>" for d in eval_dirs]
        raise missing_error(name, looked, how)
    classes = find_classes(train_dir)
    if not classes:
        raise missing_error(name, [str(train_dir) + "/<class>/<image>"], how, "train/ has no class folders")
    extra = sorted(set(find_classes(eval_dir)) - set(classes))
    if extra:
        raise ValueError(f"dataset '{name}': {eval_dir} has class folders missing from train/: {extra[:5]}")
    train_samples = scan(train_dir, {c: i for i, c in enumerate(classes)})
    hollow = empty_classes(classes, train_samples)
    if hollow and empty == "drop" and len(hollow) < len(classes):
        kept = [c for c in classes if c not in hollow]
        warnings.warn(f"dataset '{name}': dropped {len(hollow)} empty class folder{'s' if len(hollow) > 1 else ''} "
                      f"of {train_dir} (no image files): {hollow[:10]}{' ...' if len(hollow) > 10 else ''}; "
                      f"{len(kept)} classes remain", UserWarning, stacklevel=3)
        classes = kept
        train_samples = scan(train_dir, {c: i for i, c in enumerate(classes)})
    elif hollow:
        raise ValueError(f"dataset '{name}': {len(hollow)} class folder{'s' if len(hollow) > 1 else ''} of "
                         f"train/ with no image files: {', '.join(str(train_dir / c) for c in hollow[:10])}"
                         f"{' ...' if len(hollow) > 10 else ''}; each class folder becomes a class, so add its "
                         "images, remove it, or set dataset.options.empty_classes to \"drop\"")
    if num_classes is not None and len(classes) != num_classes:
        raise ValueError(f"dataset '{name}': {train_dir} has {len(classes)} class folders, expected {num_classes}")
    idx = {c: i for i, c in enumerate(classes)}
    eval_samples = scan(eval_dir, idx)
    if not train_samples or not eval_samples:
        none = train_dir if not train_samples else eval_dir
        raise missing_error(name, [str(none) + "/<class>/<image>"], how, f"no image files under {none}")
    dropped_with_images = [c for c in set(find_classes(eval_dir)) - set(classes)
                           if scan(eval_dir, {c: 0})]
    if dropped_with_images:
        raise ValueError(f"dataset '{name}': {eval_dir} has images of classes dropped for having no training "
                         f"images: {sorted(dropped_with_images)[:5]}")
    eval_hollow = [c for c in empty_classes(classes, eval_samples) if (eval_dir / c).is_dir()]
    if eval_hollow:
        message = (f"dataset '{name}': class folder{'s' if len(eval_hollow) > 1 else ''} of {eval_dir.name}/ with "
                   f"no image files: {', '.join(str(eval_dir / c) for c in eval_hollow[:10])}")
        if empty != "drop":
            raise ValueError(message + "; add its images or remove it (or set dataset.options.empty_classes to "
                                       "\"drop\" to evaluate without that class)")
        warnings.warn(message + "; the class is trained on but not evaluated", UserWarning, stacklevel=3)
    return FolderLayout(classes, train_samples, eval_samples, eval_dir)


def folder_splits(name: str, folder: Path, eval_dirs: list[str], *, size: int, augment: str, padding: int,
                  mean: Optional[list[float]], std: Optional[list[float]], how: str,
                  num_classes: Optional[int] = None, empty: str = "error") -> DataSplits:
    """Build the splits of a ``train/`` + eval-folder tree (shared by imagefolder and imagenet)."""
    layout = folder_layout(name, folder, eval_dirs, how, num_classes, empty)
    classes, train_samples, eval_samples, eval_dir = layout.classes, layout.train, layout.eval, layout.eval_dir
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

    def _where(self) -> tuple[Path, list[str], str]:
        folder = self.folder()
        eval_dirs = ["test", "val"] if self.options.test_split == "auto" else [self.options.test_split]
        how = (f"put the images in {folder}/train/<class>/ and {folder}/{eval_dirs[0]}/<class>/ "
               "(set dataset.options.path to the folder, absolute or relative to the datasets root)")
        return folder, eval_dirs, how

    def image_samples(self) -> dict[str, list[Sample]]:
        """The (path, label) samples of each split, by folder name, without decoding an image (what
        ``validate --data`` decodes before :meth:`load` computes statistics from them)."""
        folder, eval_dirs, how = self._where()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # load() warns
            layout = folder_layout("imagefolder", folder, eval_dirs, how, empty=self.options.empty_classes)
        return {"train": layout.train, layout.eval_dir.name: layout.eval}

    def load(self) -> DataSplits:
        o = self.options
        folder, eval_dirs, how = self._where()
        return folder_splits("imagefolder", folder, eval_dirs, size=o.image_size, augment=o.augment,
                             padding=o.padding, mean=o.mean, std=o.std, how=how, empty=o.empty_classes)


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

    def _where(self) -> tuple[Path, str]:
        p = Path(self.options.path).expanduser()
        folder = p if p.is_absolute() else self.root / p
        how = (f"download ILSVRC-2012 from https://image-net.org (registration required) and arrange it as "
               f"{folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG (validation images sorted into "
               "class folders)")
        return folder, how

    def image_samples(self) -> dict[str, list[Sample]]:
        """The (path, label) samples of train/ and val/, without decoding an image."""
        folder, how = self._where()
        layout = folder_layout("imagenet", folder, ["val"], how)
        return {"train": layout.train, "val": layout.eval}

    def load(self) -> DataSplits:
        o = self.options
        folder, how = self._where()
        return folder_splits("imagenet", folder, ["val"], size=o.image_size, augment="imagenet", padding=0,
                             mean=o.mean or list(IMAGENET_MEAN), std=o.std or list(IMAGENET_STD), how=how)
