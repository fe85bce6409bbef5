"""Caches beside an image folder (``.pai_cache/``): per-channel statistics (JSON) and the images decoded
once into a uint8 array (``.npz``) for the device loader, each named by a fingerprint of the file list."""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from data.image_files import FitSquare, Sample, load_rgb
from utils.io import write_bytes


def fingerprint(samples: Sequence[Sample], base: Path, *extra: object) -> str:
    """A short hash of the file list (relative paths, sizes, labels) and ``extra`` (e.g. image size), so a
    cache is never reused for different files."""
    h = hashlib.sha256(repr(extra).encode())
    for path, label in samples:
        h.update(f"{os.path.relpath(path, base)}|{os.path.getsize(path)}|{label}\n".encode())
    return h.hexdigest()[:16]


def _cache_dir(folder: Path) -> Path:
    return folder / ".pai_cache"


def _try_write(path: Path, payload: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, payload)
    except OSError as exc:  # a read-only dataset folder: work without the cache
        warnings.warn(f"cannot write cache file {path}: {exc}; it will be recomputed next time", stacklevel=3)


def _read_cache(path: Path, read: Callable[[Path], Any]) -> Any:
    """``read(path)``, or None when the cache file is absent or unusable (then it is recomputed and
    rewritten, with a warning naming it: a damaged cache never fails every run on the dataset)."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the value is computed again
        warnings.warn(f"damaged cache file {path} ({type(exc).__name__}: {exc}); recomputing it", stacklevel=3)
        return None


def _stats_from_json(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    mean, std = tuple(float(v) for v in payload["mean"]), tuple(float(v) for v in payload["std"])
    if len(mean) != 3 or len(std) != 3 or not all(np.isfinite(mean + std)) or min(std) <= 0:
        raise ValueError(f"expected 3 finite means and 3 positive stds, got {payload['mean']}, {payload['std']}")
    return mean, std


def _arrays_from_npz(path: Path, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path) as z:
        images, targets = z["images"], z["targets"]
    if images.shape != (count, 3, size, size) or images.dtype != np.uint8 or targets.shape != (count,):
        raise ValueError(f"arrays of shape {images.shape} / {targets.shape}, expected ({count}, 3, {size}, {size})")
    return torch.from_numpy(images), torch.from_numpy(targets)


def channel_stats(samples: Sequence[Sample], view: Callable[[Image.Image], Image.Image], folder: Path,
                  key: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixel/255 over ``samples`` seen through ``view``; cached as JSON in
    ``folder/.pai_cache/`` under a name that includes the file-list fingerprint."""
    cache = _cache_dir(folder) / f"stats-{key}-{fingerprint(samples, folder, key)}.json"
    cached = _read_cache(cache, _stats_from_json)
    if cached is not None:
        return cached
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for path, _ in tqdm(samples, desc="normalisation statistics", leave=False, disable=None):
        arr = np.asarray(view(load_rgb(path)), dtype=np.float64) / 255.0
        total += arr.sum(axis=(0, 1))
        total_sq += (arr ** 2).sum(axis=(0, 1))
        count += arr.shape[0] * arr.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    std = np.where(std > 0, std, 1.0)
    out = {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "images": len(samples)}
    _try_write(cache, json.dumps(out, indent=1).encode())
    return tuple(out["mean"]), tuple(out["std"])


def materialise(samples: Sequence[Sample], size: int, folder: Path, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image once (RGB, :class:`FitSquare` to ``size``) into a uint8 (N, 3, size, size) tensor
    and int64 labels; cached as ``.npz`` in ``folder/.pai_cache/``."""
    cache = _cache_dir(folder) / f"uint8-{key}-{size}-{fingerprint(samples, folder, key, size)}.npz"
    cached = _read_cache(cache, lambda path: _arrays_from_npz(path, len(samples), size))
    if cached is not None:
        return cached
    fit = FitSquare(size)
    images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(samples, desc=f"decoding {key} images", leave=False, disable=None)):
        images[i] = np.asarray(fit(load_rgb(path)), dtype=np.uint8)
    targets = np.array([s[1] for s in samples], dtype=np.int64)
    images_nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    buf = io.BytesIO()
    np.savez(buf, images=images_nchw, targets=targets)
    _try_write(cache, buf.getvalue())
    return torch.from_numpy(images_nchw), torch.from_numpy(targets)
