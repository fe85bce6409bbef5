"""Datasets from tiny files in their real on-disk formats (CIFAR python pickles, the TinyImageNet zip,
ImageFolder trees, written by ``datafiles``), loaded through the real code paths; missing / offline data gives
a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import WNIDS, md5_of, write_cifar10, write_cifar100, write_image_tree, write_tiny_zip
from torchvision import datasets as tvd

import data
from data.datasets.tinyimagenet import TinyImageNet
from data.roots import ENV_VAR, DatasetUnavailable, resolve_root


# ----------------------------------------------------------------------------------------------- CIFAR
def test_cifar10_loads_the_python_pickles_with_their_integrity_check(tmp_path: Path, monkeypatch) -> None:
    x_train, y_train, x_test, y_test = write_cifar10(tmp_path, monkeypatch)
    splits = data.get("CIFAR10")(root=str(tmp_path), download=False).load()
    assert (splits.num_classes, splits.input_shape) == (10, (3, 32, 32))
    assert len(splits.train) == 100 and len(splits.test) == 30
    assert np.array_equal(splits.train_targets, y_train)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    img, label = splits.test[7]
    expected = (torch.from_numpy(x_test[7]).permute(2, 0, 1).float() / 255 - mean) / std
    assert label == y_test[7] and torch.allclose(img, expected, atol=1e-6)
    img, label = splits.train_eval[42]
    expected = (torch.from_numpy(x_train[42]).permute(2, 0, 1) / 255 - mean) / std
    assert label == y_train[42] and torch.allclose(img, expected, atol=1e-6)
    torch.manual_seed(0)
    aug = torch.stack([splits.train[42][0] for _ in range(8)])
    assert aug.shape == (8, 3, 32, 32) and not all(torch.equal(aug[0], a) for a in aug[1:])  # random crops/flips
    dd = splits.device_data()
    assert dd.train_images.dtype == torch.uint8 and dd.train_images.shape == (100, 3, 32, 32)
    assert torch.equal(dd.train_images[42], torch.from_numpy(x_train[42]).permute(2, 0, 1))
    assert (dd.padding, dd.flip) == (4, True)


def test_cifar_corrupted_file_fails_the_md5_check_with_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    write_cifar10(tmp_path, monkeypatch)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(batch.read_bytes())
    raw[-5] ^= 0xFF
    batch.write_bytes(bytes(raw))
    with pytest.raises(DatasetUnavailable, match="md5") as err:
        data.get("cifar10")(root=str(tmp_path), download=False).load()
    assert "data_batch_3" in str(err.value)


def test_cifar100_uses_fine_labels(tmp_path: Path, monkeypatch) -> None:
    write_cifar100(tmp_path, monkeypatch)
    splits = data.get("cifar100")(root=str(tmp_path), download=False, augment=False).load()
    assert splits.num_classes == 100 and len(splits.train) == 300 and len(splits.test) == 100
    assert np.array_equal(splits.train_targets, np.arange(300) % 100)
    img0, _ = splits.train[0]
    assert torch.equal(img0, splits.train[0][0])  # augment=False: deterministic


def test_missing_cifar_without_download_says_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable) as err:
        data.get("cifar10")(root=str(tmp_path / "nowhere"), download=False).load()
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "batches.meta" in msg and "dataset.download" in msg and ENV_VAR in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg


def test_offline_download_failure_is_wrapped_not_a_urllib_traceback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tvd.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens
    with pytest.raises(DatasetUnavailable) as err:
        data.get("cifar10")(root=str(tmp_path), download=True).load()
    assert "download of http://127.0.0.1:9/cifar-10-python.tar.gz failed" in str(err.value)
    assert err.value.__suppress_context__ and err.value.__cause__ is None


def test_datasets_root_precedence(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_root("./datasets") == Path("./datasets") and resolve_root(None) == Path("./datasets")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert resolve_root("./datasets") == tmp_path and resolve_root(None) == tmp_path
    assert resolve_root(str(tmp_path / "mine")) == tmp_path / "mine"  # an explicit root wins
    assert data.get("cifar10")(root="./datasets").root == tmp_path


# --------------------------------------------------------------------------------------- TinyImageNet
def _use_zip(monkeypatch, src: Path) -> None:
    monkeypatch.setattr(TinyImageNet, "URL", src.resolve().as_uri())
    monkeypatch.setattr(TinyImageNet, "MD5", md5_of(src))


def test_tinyimagenet_downloads_verifies_extracts_and_sorts_val_once(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "mirror" / "tiny-imagenet-200.zip"
    src.parent.mkdir()
    annotations = write_tiny_zip(src)
    _use_zip(monkeypatch, src)
    root = tmp_path / "datasets"
    splits = data.get("TinyImageNet")(root=str(root), download=True).load()
    folder = root / "tiny-imagenet-200"
    assert (root / "tiny-imagenet-200.zip").is_file() and (folder / "wnids.txt").is_file()
    assert splits.num_classes == 3 and splits.input_shape == (3, 64, 64)
    assert len(splits.train) == 12 and np.array_equal(np.bincount(splits.train_targets), [4, 4, 4])
    assert len(splits.test) == 6
    for path, label in splits.test.samples:
        assert WNIDS[label] == annotations[Path(path).name] and Path(path).parent.name == WNIDS[label]
    assert sorted(p.name for p in (folder / "val" / "images").iterdir()) == sorted(annotations)  # original kept
    x, y = splits.test[0]
    assert x.shape == (3, 64, 64) and y == splits.test.samples[0][1]
    assert not list(root.glob(".*tmp-*")) and not list(folder.glob(".*tmp-*"))
    # second run: no download (the mirror is gone), same splits
    monkeypatch.setattr(TinyImageNet, "URL", "http://127.0.0.1:9/gone.zip")
    again = data.get("tinyimagenet")(root=str(root), download=True).load()
    assert again.test.samples == splits.test.samples and len(again.train) == 12


def test_tinyimagenet_crash_while_sorting_val_leaves_no_half_built_folder(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "tiny-imagenet-200.zip"
    write_tiny_zip(src)
    _use_zip(monkeypatch, src)
    import data.datasets.tinyimagenet as tin

    real = tin._link_or_copy
    calls = {"n": 0}

    def crash_on_third(a: Path, b: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        real(a, b)

    monkeypatch.setattr(tin, "_link_or_copy", crash_on_third)
    with pytest.raises(OSError, match="simulated"):
        data.get("tinyimagenet")(root=str(tmp_path), download=False).load()
    folder = tmp_path / "tiny-imagenet-200"
    assert not (folder / "val_by_class").exists() and not list(folder.glob(".val_by_class.tmp-*"))
    monkeypatch.setattr(tin, "_link_or_copy", real)
    splits = data.get("tinyimagenet")(root=str(tmp_path), download=False).load()
    assert len(splits.test) == 6 and sum(1 for _ in (folder / "val_by_class").rglob("*.JPEG")) == 6


def test_tinyimagenet_bad_checksum_and_missing_data_errors(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "mirror.zip"
    write_tiny_zip(src)
    monkeypatch.setattr(TinyImageNet, "URL", src.resolve().as_uri())
    monkeypatch.setattr(TinyImageNet, "MD5", "0" * 32)
    root = tmp_path / "datasets"
    with pytest.raises(DatasetUnavailable, match="expected 0{32}"):
        data.get("tinyimagenet")(root=str(root), download=True).load()
    assert not (root / "tiny-imagenet-200.zip").exists() and not list(root.glob("*.partial-*"))
    with pytest.raises(DatasetUnavailable) as err:
        data.get("tinyimagenet")(root=str(root), download=False).load()
    msg = str(err.value)
    assert str(root / "tiny-imagenet-200" / "wnids.txt") in msg and "tiny-imagenet-200.zip" in msg
    assert TinyImageNet.URL in msg


# ------------------------------------------------------------------------------ imagefolder / imagenet
def test_imagefolder_resizes_computes_and_caches_normalisation(tmp_path: Path) -> None:
    folder = tmp_path / "mydata"
    write_image_tree(folder, splits=("train", "val"))  # no test/: 'auto' falls back to val/
    src = data.get("imagefolder")(root=str(tmp_path), path="mydata", image_size=16)
    splits = src.load()
    assert splits.num_classes == 3 and splits.input_shape == (3, 16, 16)
    assert {Path(p).parent.name: y for p, y in splits.train.samples} == {"a": 0, "b": 1, "c": 2}  # sorted folders
    assert len(splits.train) == 9 and len(splits.test) == 9
    # the statistics are those of the resized training images
    from data.image_files import FitSquare, load_rgb

    pix = np.stack([np.asarray(FitSquare(16)(load_rgb(p)), dtype=np.float64) / 255 for p, _ in splits.train.samples])
    mean, std = pix.mean(axis=(0, 1, 2)), pix.std(axis=(0, 1, 2))
    x, _ = splits.train_eval[0]
    chw = lambda v: torch.tensor(v).view(3, 1, 1)
    first = torch.from_numpy(pix[0]).permute(2, 0, 1)
    expected = (first - chw(mean)) / chw(std)
    assert x.shape == (3, 16, 16) and torch.allclose(x.double(), expected, atol=1e-5)
    (cache,) = (folder / ".pai_cache").glob("stats-cifar-16-*.json")
    payload = json.loads(cache.read_text())
    assert np.allclose(payload["mean"], mean) and np.allclose(payload["std"], std)
    payload["mean"] = [0.25, 0.5, 0.75]
    cache.write_text(json.dumps(payload))
    again = data.get("imagefolder")(root=str(tmp_path), path="mydata", image_size=16).load()
    x2, _ = again.train_eval[0]
    assert torch.allclose(x2.double(), (first - chw([0.25, 0.5, 0.75])) / chw(std), atol=1e-5)  # read from the cache
    dd = splits.device_data()
    assert dd.train_images.shape == (9, 3, 16, 16)
    assert torch.equal(dd.train_targets, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))


def test_a_damaged_statistics_or_image_cache_is_recomputed_not_a_failure(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "mydata", splits=("train", "test"))
    load = lambda: data.get("imagefolder")(root=str(tmp_path), path="mydata", image_size=16).load()
    splits = load()
    good_x, _ = splits.train_eval[0]
    images = splits.device_data().train_images
    (stats,) = (tmp_path / "mydata" / ".pai_cache").glob("stats-*.json")
    arrays = sorted((tmp_path / "mydata" / ".pai_cache").glob("uint8-*.npz"))
    for damage in (b'{"mean": [0.5, 0.5', b"[1, 2]", b'{"mean": [0, 0, 0], "std": [0, 1, 1]}'):
        stats.write_bytes(damage)
        for f in arrays:
            f.write_bytes(f.read_bytes()[:100])
        with pytest.warns(UserWarning, match=r"damaged cache file .*stats-"):
            again = load()
        x, _ = again.train_eval[0]
        assert torch.equal(x, good_x)
        with pytest.warns(UserWarning, match=r"damaged cache file .*uint8-"):
            assert torch.equal(again.device_data().train_images, images)
    assert json.loads(stats.read_text())["std"][0] > 0  # rewritten


def test_imagefolder_given_constants_imagenet_preset_and_errors(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "d", splits=("train", "test"), fmt="JPEG", size=(48, 48))
    opts = dict(path=str(tmp_path / "d"), image_size=32, augment="imagenet", mean=[0.5] * 3, std=[0.25] * 3)
    splits = data.get("imagefolder")(root="unused", **opts).load()
    assert splits.train[0][0].shape == (3, 32, 32) and splits.test[0][0].shape == (3, 32, 32)
    assert splits.device_data is None  # resized crops cannot be done on the device loader
    assert not (tmp_path / "d" / ".pai_cache").exists()  # constants given: nothing computed
    with pytest.raises(DatasetUnavailable) as err:
        data.get("imagefolder")(root=str(tmp_path), path="absent").load()
    assert str(tmp_path / "absent" / "train") in str(err.value) and "dataset.options.path" in str(err.value)
    from utils.schema import ConfigError

    with pytest.raises(ConfigError, match="required"):
        data.get("imagefolder")(root=str(tmp_path))


def test_imagenet_reads_an_imagefolder_root(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "imagenet", splits=("train", "val"), classes=("n01", "n02"), fmt="JPEG", size=(50, 40))
    splits = data.get("ImageNet")(root=str(tmp_path), image_size=32).load()
    assert splits.num_classes == 2 and len(splits.test) == 6
    assert {Path(p).parent.name: y for p, y in splits.test.samples} == {"n01": 0, "n02": 1}
    assert splits.train[0][0].shape == (3, 32, 32) and splits.test[0][0].shape == (3, 32, 32)
    with pytest.raises(DatasetUnavailable, match="image-net.org"):
        data.get("imagenet")(root=str(tmp_path / "none")).load()


# ------------------------------------------------------------------ issue 22.5: empty classes, undecodable images
def test_an_empty_class_folder_is_an_error_or_dropped_with_the_count_stated(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "d", splits=("train", "test"), classes=("a", "b", "c"), size=(8, 8))
    (tmp_path / "d" / "train" / "empty").mkdir()
    (tmp_path / "d" / "train" / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError) as err:
        data.get("imagefolder")(root=str(tmp_path), path="d", image_size=8).load()
    text = str(err.value)
    assert str(tmp_path / "d" / "train" / "empty") in text and "no image files" in text and "empty_classes" in text
    with pytest.warns(UserWarning, match=r"dropped 1 empty class folder.*'empty'.*3 classes"):
        splits = data.get("imagefolder")(root=str(tmp_path), path="d", image_size=8, empty_classes="drop").load()
    assert splits.num_classes == 3 and set(splits.train.targets) == {0, 1, 2}
    assert {Path(p).parent.name: y for p, y in splits.test.samples} == {"a": 0, "b": 1, "c": 2}
    # an empty class folder in the evaluation split is named too
    (tmp_path / "d" / "train" / "empty").rename(tmp_path / "gone")
    (tmp_path / "d" / "test" / "c2").mkdir()
    (tmp_path / "d" / "train" / "c2").mkdir()
    write_image_tree(tmp_path / "extra", splits=("train",), classes=("c2",), size=(8, 8))
    for f in (tmp_path / "extra" / "train" / "c2").iterdir():
        f.rename(tmp_path / "d" / "train" / "c2" / f.name)
    with pytest.raises(ValueError, match=str(tmp_path / "d" / "test" / "c2")):
        data.get("imagefolder")(root=str(tmp_path), path="d", image_size=8).load()


def test_validate_data_decodes_every_image_and_names_each_bad_one(tmp_path: Path, capsys) -> None:
    import main

    write_image_tree(tmp_path / "d", splits=("train", "test"), fmt="JPEG", size=(8, 8))
    bad_test = tmp_path / "d" / "test" / "b" / "1.jpeg"
    bad_test.write_bytes(bad_test.read_bytes()[:40])  # truncated
    bad_test2 = tmp_path / "d" / "test" / "c" / "broken.jpg"
    bad_test2.write_bytes(b"\xff\xd8\xff not a JPEG at all")
    cfg = {"general": {"experiment": "pbt", "gpu": {"ngpus": 0}},
           "dataset": {"class": "imagefolder", "root": str(tmp_path), "options": {"path": "d", "image_size": 8}},
           "model": {"class": "resnet18", "num_classes": 3},
           "training": {"num_steps": 1, "compressor": {"class": "none"}}}
    path = tmp_path / "folder.json"
    path.write_text(json.dumps(cfg))
    assert main.main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main.main(["validate", "--data", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"INVALID  {path}" in out and str(bad_test) in out and str(bad_test2) in out, out
    assert "cannot be decoded" in out and out.count("cannot be decoded") == 2, out
    for f in (bad_test, bad_test2):
        f.unlink()
    capsys.readouterr()
    assert main.main(["validate", "--data", str(path)]) == 0, capsys.readouterr().out
