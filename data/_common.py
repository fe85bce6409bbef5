"""Helpers shared by the dataset modules: where datasets live, clear errors for missing data, downloads
that never leak a bare urllib traceback, atomic folder creation, an in-memory uint8 image dataset, the
description of data the device-resident loader can hold, the crop/flip/normalise transforms and the
option dataclasses of the RGB datasets.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.typed import Problem, option

ENV_VAR = "PAI_DATASETS"
DEFAULT_ROOT = "./datasets"


def resolve_root(root: Optional[str | os.PathLike]) -> Path:
    """The datasets folder.  Precedence: a ``dataset.root`` other than the default ``./datasets``; else
    ``$PAI_DATASETS`` when set; else ``./datasets`` (relative to the working directory)."""
    if root is None or str(root) == "" or os.path.normpath(str(root)) == os.path.normpath(DEFAULT_ROOT):
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(os.path.expanduser(str(root)))


class DatasetUnavailable(FileNotFoundError):
    """A dataset is missing (and could not be downloaded); the message says what was looked for where
    and how to provide it."""


def missing_error(name: str, looked_for: Sequence[str | Path], how: str, cause: str = "") -> DatasetUnavailable:
    """Build the user-facing error for a missing dataset."""
    lines = [f"dataset '{name}' is not available.", "Looked for:"]
    lines += [f"  - {p}" for p in looked_for]
    if cause:
        lines.append(f"Cause: {cause}")
    lines.append(f"How to provide it: {how}")
    lines.append(f"The datasets folder is dataset.root when set to something other than {DEFAULT_ROOT}, else "
                 f"${ENV_VAR} when set, else {DEFAULT_ROOT}.")
    return DatasetUnavailable("\n".join(lines))


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: str | Path, md5: Optional[str], name: str, how: str) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.partial`` and a rename, so a crash never leaves a
    truncated file under the final name) and verify its md5.  Network and checksum failures become a
    :class:`DatasetUnavailable` naming the URL, the destination and how to provide the file by hand."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
    try:
        from tqdm.auto import tqdm

        with urllib.request.urlopen(url, timeout=60) as resp, open(partial, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", disable=None,
                      leave=False) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise missing_error(name, [dest], how, cause=f"download of {url} failed: {reason}") from None
    if md5 is not None:
        got = md5sum(partial)
        if got != md5:
            partial.unlink(missing_ok=True)
            raise missing_error(name, [dest], how, cause=f"download of {url} has md5 {got}, expected {md5} "
                                                         "(corrupted or changed file)")
    os.replace(partial, dest)
    return dest


def atomic_folder(final: Path, build: Callable[[Path], None], subfolder: Optional[str] = None) -> Path:
    """Create folder ``final`` by running ``build(tmp)`` on a fresh temporary sibling and renaming it
    (or its ``subfolder``, e.g. the top folder of an extracted archive) to ``final``.

    A crash while building leaves only the temporary folder (removed by the next attempt), never a
    half-filled ``final``; when another process wins the race, its folder is kept and ours removed.
    """
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    for stale in final.parent.glob(prefix + "*"):
        pid = stale.name[len(prefix):]
        if not (pid.isdigit() and _pid_alive(int(pid))) or int(pid) == os.getpid():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f"{prefix}{os.getpid()}"
    tmp.mkdir()
    try:
        build(tmp)
        source = tmp / subfolder if subfolder else tmp
        try:
            os.rename(source, final)
        except OSError:
            if not final.is_dir():
                raise  # a real failure, not another process finishing first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def stat_option(stat: Literal["mean", "std"], default: str, purpose: str = "") -> Any:
    """The ``mean`` or ``std`` option of an RGB dataset: per-channel numbers, null for ``default`` (named in
    the help text); a std must be positive."""
    bounds: dict[str, Any] = {"min": 0, "min_exclusive": True} if stat == "std" else {}
    return option(None, f"per-channel {stat}{purpose} (default: {default})", **bounds)


@dataclass
class RgbOptions:
    """Base of the RGB datasets' options.  Subclasses declare ``mean`` and ``std`` with :func:`stat_option`
    (after their own fields, so the JSON keys keep their order)."""

    def check(self, path: str, problems: list[Problem]) -> None:
        """``mean`` / ``std``, when given, must hold three numbers (R, G, B)."""
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                problems.append(Problem(f"{path}.{key}", f"expected 3 numbers (R, G, B), got {value}"))


@dataclass
class CropFlipOptions(RgbOptions):
    """Options of the datasets trained with a random crop after zero padding and a horizontal flip
    (cifar10 / cifar100 with these help texts; tinyimagenet overrides those that name its crop size and
    default statistics)."""

    augment: bool = option(True, "random crop with padding + horizontal flip for training")
    padding: int = option(4, "zero padding (pixels) before the random 32x32 crop", min=0)
    mean: Optional[list[float]] = stat_option("mean", "the dataset's", " for normalisation")
    std: Optional[list[float]] = stat_option("std", "the dataset's", " for normalisation")
