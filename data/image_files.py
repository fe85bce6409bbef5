"""Image files in class folders: scanning, RGB decoding, the square fit and a (path, label) dataset."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms import functional as F
from tqdm.auto import tqdm

Sample = tuple[str, int]


def find_classes(folder: Path) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` (one per class)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def scan(folder: Path, class_to_idx: dict[str, int]) -> list[Sample]:
    """(path, label) of every image under ``folder/<class>/`` (sorted; classes without images allowed)."""
    return make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def empty_classes(classes: Sequence[str], samples: Sequence[Sample]) -> list[str]:
    """The names among ``classes`` (label i = ``classes[i]``) that no sample carries."""
    held = {label for _, label in samples}
    return [c for i, c in enumerate(classes) if i not in held]


def load_rgb(path: str) -> Image.Image:
    with open(path, "rb") as fh:
        return Image.open(fh).convert("RGB")


def decode_problem(path: str) -> Optional[str]:
    """None if ``path`` decodes fully as an image, else why not (one line; never the file's bytes)."""
    try:
        with open(path, "rb") as fh, Image.open(fh) as img:
            img.convert("RGB").load()
    except UnidentifiedImageError:
        return "not an image format PIL recognises"
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        first = first.replace(repr(path), "the file").replace(path, "the file")
        return f"{type(exc).__name__}{': ' + first[:200] if first else ''}"
    return None


def undecodable(paths: Iterable[str], desc: str = "decoding images", workers: Optional[int] = None
                ) -> list[tuple[str, str]]:
    """(path, reason) of every file of ``paths`` that does not decode as an image, in the given order;
    decoded by a thread pool (PIL releases the GIL while decoding) behind a tqdm progress bar."""
    paths = list(paths)
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(tqdm(pool.map(decode_problem, paths), total=len(paths), desc=desc, unit="image",
                            leave=False, disable=None))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


class FitSquare:
    """Resize the shorter side to ``size`` and centre-crop ``size`` x ``size``; images already of that
    size are returned unchanged (so 32x32 CIFAR JPEGs keep their exact pixels)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.size == (self.size, self.size):
            return img
        img = F.resize(img, self.size, antialias=True)
        return F.center_crop(img, [self.size, self.size])

    def __repr__(self) -> str:
        return f"FitSquare({self.size})"


class SampleDataset(Dataset):
    """Images read from a list of (path, label) with ``transform`` applied to the RGB PIL image."""

    def __init__(self, samples: Sequence[Sample], transform: Optional[Callable] = None) -> None:
        self.samples = list(samples)
        self.targets = np.array([s[1] for s in self.samples], dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        img = load_rgb(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, target
