"""TinyImageNet-200: 100,000 train / 10,000 validation 64x64 images of 200 classes (the validation set
serves as the test set, the official test set has no labels).

Files: ``<root>/tiny-imagenet-200/`` as in the official zip (wnids.txt, train/<wnid>/images/*.JPEG,
val/images/*.JPEG + val/val_annotations.txt).  When missing and ``dataset.download`` is true the zip
(``<root>/tiny-imagenet-200.zip``) is downloaded, its md5 verified, and extracted into a temporary
folder that is renamed into place.  The validation images are then arranged into class folders once,
in ``tiny-imagenet-200/val_by_class/<wnid>/`` (hard links, else copies; the original ``val/`` is left
as it is), again built in a temporary folder and renamed, so a crash never leaves a half-built folder
that a later run would trust.  Augmentation: random 64x64 crop after zero padding of 4, flip.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from data import register
from data.arrays import DeviceData
from data.download import atomic_folder, download_file, md5sum
from data.options import CropFlipOptions, stat_option
from data.roots import missing_error
from data.transforms import crop_flip_transforms
from data.image_cache import materialise
from data.image_files import SampleDataset, scan
from data.base import DatasetSource, DataSplits
from utils.schema import option


@dataclass
class TinyImageNetOptions(CropFlipOptions):
    padding: int = option(4, "zero padding before the random 64x64 crop", min=0)
    mean: Optional[list[float]] = stat_option("mean", "the training-set constants")
    std: Optional[list[float]] = stat_option("std", "the training-set constants")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@register("tinyimagenet")
class TinyImageNet(DatasetSource):
    """TinyImageNet-200 (see the module docstring)."""

    Options = TinyImageNetOptions
    num_classes = 200
    input_shape = (3, 64, 64)
    URL: ClassVar[str] = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    MD5: ClassVar[Optional[str]] = "90528d7ca1a48142e341f4ef8d21d0de"
    FOLDER: ClassVar[str] = "tiny-imagenet-200"
    mean: ClassVar[tuple[float, ...]] = (0.4802, 0.4481, 0.3975)
    std: ClassVar[tuple[float, ...]] = (0.2770, 0.2691, 0.2821)
    official_mean = (0.480, 0.448, 0.397)
    official_std = (0.276, 0.269, 0.282)
    official_shuffle = True  # the official TinyImageNet loader shuffles (without train4val)

    @property
    def folder(self) -> Path:
        return self.root / self.FOLDER

    @property
    def zip_path(self) -> Path:
        return self.root / f"{self.FOLDER}.zip"

    def _how(self) -> str:
        return (f"set dataset.download to true (needs internet), or download {self.URL} yourself into "
                f"{self.root} (it is extracted automatically), or extract it there so that {self.folder} holds "
                "wnids.txt, train/ and val/")

    def _looked_for(self) -> list[str]:
        f = self.folder
        return [str(f / "wnids.txt"), str(f / "train/<wnid>/images/*.JPEG"), str(f / "val/val_annotations.txt"),
                str(self.zip_path)]

    def _complete(self) -> bool:
        f = self.folder
        return (f / "wnids.txt").is_file() and (f / "train").is_dir() and (f / "val" / "val_annotations.txt").is_file()

    # ------------------------------------------------------------ preparation
    def prepare(self) -> Path:
        """Make sure the extracted folder exists (download / verify / extract as needed); return it."""
        if self._complete():
            return self.folder
        if not self.zip_path.is_file():
            if not self.download:
                raise missing_error("tinyimagenet", self._looked_for(), self._how(), "download is off")
            download_file(self.URL, self.zip_path, self.MD5, "tinyimagenet", self._how())
        elif self.MD5 is not None and md5sum(self.zip_path) != self.MD5:
            raise missing_error("tinyimagenet", self._looked_for(), self._how(),
                                f"{self.zip_path} fails the md5 check (expected {self.MD5}); delete it to "
                                "download it again")
        if self.folder.exists():  # never half-built by us (atomic rename): foreign or damaged
            raise missing_error("tinyimagenet", self._looked_for(), self._how(),
                                f"{self.folder} exists but is incomplete; remove it to extract the zip again")
        self._extract()
        return self.folder

    def _extract(self) -> None:
        def build(tmp: Path) -> None:
            try:
                with zipfile.ZipFile(self.zip_path) as zf:
                    bad = zf.testzip()
                    if bad is not None:
                        raise zipfile.BadZipFile(f"corrupted member {bad}")
                    zf.extractall(tmp)
            except zipfile.BadZipFile as exc:
                raise missing_error("tinyimagenet", [str(self.zip_path)], self._how(),
                                    f"{self.zip_path} is not a valid zip ({exc}); delete it to download "
                                    "again") from None
            inner = tmp / self.FOLDER
            if not (inner / "wnids.txt").is_file():
                raise missing_error("tinyimagenet", [f"{self.zip_path}: {self.FOLDER}/wnids.txt"], self._how(),
                                    "the zip does not have the official layout")

        atomic_folder(self.folder, build, subfolder=self.FOLDER)

    def val_folder(self) -> Path:
        """``val_by_class/<wnid>/`` built once from ``val/val_annotations.txt`` (atomically)."""
        folder = self.folder

        def build(tmp: Path) -> None:
            wnids = self.wnids()
            for w in wnids:
                (tmp / w).mkdir()
            lines = (folder / "val" / "val_annotations.txt").read_text().splitlines()
            for line in lines:
                parts = line.split("\t")
                if len(parts) < 2:
                    continue
                fname, wnid = parts[0], parts[1]
                if wnid not in wnids:
                    raise ValueError(f"{folder / 'val' / 'val_annotations.txt'}: unknown wnid {wnid} for {fname}")
                _link_or_copy(folder / "val" / "images" / fname, tmp / wnid / fname)

        return atomic_folder(folder / "val_by_class", build)

    def wnids(self) -> list[str]:
        return sorted(w.strip() for w in (self.folder / "wnids.txt").read_text().split() if w.strip())

    # ------------------------------------------------------------------- load
    def load(self) -> DataSplits:
        self.prepare()
        wnids = self.wnids()
        idx = {w: i for i, w in enumerate(wnids)}
        train_samples = []
        for w in wnids:  # train/<wnid>/images/*.JPEG
            images = self.folder / "train" / w / "images"
            if images.is_dir():
                train_samples += [(str(p), idx[w]) for p in sorted(images.iterdir())
                                  if p.suffix.lower() in (".jpeg", ".jpg", ".png")]
        if not train_samples:
            raise missing_error("tinyimagenet", self._looked_for(), self._how(), "no training images found")
        test_samples = scan(self.val_folder(), idx)
        o = self.options
        mean, std = self.normalisation(o.mean, o.std, (self.mean, self.std))
        train_tf, eval_tf = crop_flip_transforms(64, mean, std, o.padding, o.augment)
        train = SampleDataset(train_samples, train_tf)

        def device_data() -> DeviceData:
            x_train, y_train = materialise(train_samples, 64, self.folder, "train")
            x_test, y_test = materialise(test_samples, 64, self.folder, "val")
            return DeviceData(x_train, y_train, x_test, y_test, mean, std,
                              padding=o.padding if o.augment else 0, flip=o.augment)

        return DataSplits(train=train, train_eval=SampleDataset(train_samples, eval_tf),
                          test=SampleDataset(test_samples, eval_tf), train_targets=train.targets,
                          num_classes=len(wnids), input_shape=(3, 64, 64), device_data=device_data)
