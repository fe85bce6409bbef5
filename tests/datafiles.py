"""Tiny dataset files in their real on-disk formats (CIFAR python pickles, the TinyImageNet zip, ImageFolder
trees), written for the dataset, device-loader and training-loop tests."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets as tvd

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 20, n_test: int = 30,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 python pickles (5 train batches + test + batches.meta) under root/cifar-10-batches-py;
    torchvision's expected md5 list is pointed at these files.  Returns (x_train HWC, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys, train_list = [], [], []
    for b in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in (np.arange(per_batch) + b) % 10]
        _pickle(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "data": x, "labels": y})
        train_list.append([f"data_batch_{b}", md5_of(folder / f"data_batch_{b}")])
        xs.append(x)
        ys += y
    x_test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    y_test = [int(v) for v in np.arange(n_test) % 10]
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": x_test, "labels": y_test})
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch})
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5_of(folder / "test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                              "md5": md5_of(folder / "batches.meta")})
    to_hwc = lambda a: a.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return to_hwc(np.concatenate(xs)), np.array(ys), to_hwc(x_test), np.array(y_test)


def write_cifar100(root: Path, monkeypatch: pytest.MonkeyPatch, n_train: int = 300, n_test: int = 100) -> None:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        _pickle(folder / name, {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                "fine_labels": [int(v) for v in np.arange(n) % 100],
                                "coarse_labels": [int(v) for v in np.arange(n) % 20]})
    _pickle(folder / "meta", {"fine_label_names": [f"class{i:02d}" for i in range(100)],
                              "coarse_label_names": [f"super{i}" for i in range(20)]})
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", md5_of(folder / "train")]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", md5_of(folder / "test")]])
    monkeypatch.setattr(tvd.CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names",
                                               "md5": md5_of(folder / "meta")})


def _jpeg(rng: np.random.Generator, size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


WNIDS = ["n01443537", "n01629819", "n01641577"]


def write_tiny_zip(path: Path, per_class: int = 4, val_per_class: int = 2) -> dict[str, str]:
    """A TinyImageNet zip in the official layout; returns {val file name: wnid}."""
    rng = np.random.default_rng(2)
    top = "tiny-imagenet-200"
    annotations: dict[str, str] = {}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/wnids.txt", "\n".join(WNIDS) + "\n")
        zf.writestr(f"{top}/words.txt", "\n".join(f"{w}\tthing {i}" for i, w in enumerate(WNIDS)) + "\n")
        for w in WNIDS:
            boxes = []
            for i in range(per_class):
                zf.writestr(f"{top}/train/{w}/images/{w}_{i}.JPEG", _jpeg(rng))
                boxes.append(f"{w}_{i}.JPEG\t0\t0\t63\t63")
            zf.writestr(f"{top}/train/{w}/{w}_boxes.txt", "\n".join(boxes) + "\n")
        k = 0
        for _ in range(val_per_class):
            for w in WNIDS:
                name = f"val_{k}.JPEG"
                zf.writestr(f"{top}/val/images/{name}", _jpeg(rng))
                annotations[name] = w
                k += 1
        zf.writestr(f"{top}/val/val_annotations.txt",
                    "\n".join(f"{n}\t{w}\t0\t0\t63\t63" for n, w in annotations.items()) + "\n")
        zf.writestr(f"{top}/test/images/test_0.JPEG", _jpeg(rng))
    return annotations


def write_image_tree(folder: Path, splits: tuple[str, ...] = ("train", "test"),
                     classes: tuple[str, ...] = ("a", "b", "c"), per_class: int = 3,
                     size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> None:
    rng = np.random.default_rng(3)
    for split in splits:
        for c in classes:
            d = folder / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.{fmt.lower()}", format=fmt)
