"""The device-resident loader: exact equality with the torchvision pipeline for a given crop/flip, the
augmentation distribution, seeded per-epoch determinism, integration in build_loaders, and JSON
validation of every dataset and model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import write_cifar10, write_image_tree
from torchvision.transforms import functional as TF

import data
from data.device_loader import DeviceLoader, augment_batch
from data.loaders import EpochShuffler, LoaderSettings, MaskDataSettings, Placement, build_loaders

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _candidates(img: torch.Tensor, padding: int) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every output torchvision's RandomCrop(size, padding) + RandomHorizontalFlip can give for ``img``."""
    h, w = img.shape[1:]
    padded = TF.pad(img, [padding])  # zero fill, as RandomCrop(padding=p)
    out = {}
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = TF.crop(padded, top, left, h, w)
            out[(top, left, False)] = crop
            out[(top, left, True)] = TF.hflip(crop)
    return out


def test_each_augmented_image_is_a_torchvision_crop_flip_and_the_draws_are_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    n, p = 1800, 2
    images = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=g)
    loader = DeviceLoader(images, torch.zeros(n, dtype=torch.int64), batch_size=256, device=torch.device("cpu"),
                          mean=(0, 0, 0), std=(1, 1, 1), train=True, seed=3, padding=p, flip=True)
    order = loader.order()
    batches = torch.cat([x for x, _ in loader])
    assert batches.shape == (n, 3, 6, 6) and batches.dtype == torch.float32
    counts: dict[tuple[int, int, bool], int] = {}
    for i in range(n):
        src = images[order[i]]
        out = torch.round(batches[i] * 255).to(torch.uint8)
        matches = [k for k, c in _candidates(src, p).items() if torch.equal(c, out)]
        assert matches, "an output that torchvision's RandomCrop + flip cannot produce"
        counts[matches[0]] = counts.get(matches[0], 0) + 1
    tops = np.bincount([k[0] for k, c in counts.items() for _ in range(c)], minlength=2 * p + 1)
    lefts = np.bincount([k[1] for k, c in counts.items() for _ in range(c)], minlength=2 * p + 1)
    flips = sum(c for k, c in counts.items() if k[2])
    expected = n / (2 * p + 1)
    sigma = np.sqrt(n * (1 / (2 * p + 1)) * (1 - 1 / (2 * p + 1)))
    assert np.all(np.abs(tops - expected) < 5 * sigma) and np.all(np.abs(lefts - expected) < 5 * sigma)
    assert abs(flips - n / 2) < 5 * np.sqrt(n / 4)
    assert tops.min() > 0 and lefts.min() > 0 and 0 < flips < n  # every offset and both flips occur


def test_augment_batch_matches_torchvision_for_given_offsets_and_flip() -> None:
    img = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = augment_batch(img, torch.tensor([[0, 8], [5, 1]]), torch.tensor([True, False]), padding=4)
    assert torch.equal(out[0], TF.hflip(TF.crop(TF.pad(img[0], [4]), 0, 8, 32, 32)))
    assert torch.equal(out[1], TF.crop(TF.pad(img[1], [4]), 5, 1, 32, 32))
    x = DeviceLoader(img, torch.zeros(2, dtype=torch.int64), batch_size=2, device=torch.device("cpu"), mean=MEAN,
                     std=STD, train=False).normalise(img)
    ref = torch.stack([TF.normalize(TF.to_tensor(TF.to_pil_image(i)), MEAN, STD) for i in img])
    assert torch.equal(x, ref)  # the same operations as ToTensor + Normalize


def test_seeded_epochs_are_reproducible_and_follow_the_classic_order() -> None:
    n = 50
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    targets = torch.arange(n)
    make = lambda: DeviceLoader(images, targets, batch_size=16, device=torch.device("cpu"), mean=MEAN, std=STD,
                                train=True, seed=7, padding=2, flip=True)
    a, b = make(), make()
    a.set_epoch(3)
    first = [(x.clone(), y.clone()) for x, y in a]
    for e in (0, 1):  # other epochs in between do not matter
        b.set_epoch(e)
        list(b)
    b.set_epoch(3)
    again = list(b)
    assert len(first) == len(a) == 4 and all(torch.equal(x1, x2) and torch.equal(y1, y2)
                                               for (x1, y1), (x2, y2) in zip(first, again))
    classic = EpochShuffler(n, 7)
    classic.set_epoch(3)
    assert torch.cat([y for _, y in first]).tolist() == list(classic)
    b.set_epoch(4)
    assert not torch.equal(torch.cat([y for _, y in b]), torch.cat([y for _, y in first]))


def test_build_loaders_device_matches_classic_eval_and_split(tmp_path: Path, monkeypatch) -> None:
    write_cifar10(tmp_path, monkeypatch)
    splits = data.get("cifar10")(root=str(tmp_path), download=False).load()
    loading = LoaderSettings(batch_size=16, eval_batch_size=32, train4val=True)
    mask = MaskDataSettings(batch_size=4, per_class_samples=2)
    classic = build_loaders(splits, loading, mask, seed=5)
    device = LoaderSettings(batch_size=16, eval_batch_size=32, train4val=True, kind="device")
    dev = build_loaders(splits, device, mask, seed=5, placement=Placement(torch.device("cpu")))
    assert isinstance(dev.train, DeviceLoader) and isinstance(dev.val, DeviceLoader)
    assert len(dev.train.dataset) == len(classic.train.dataset) == 80 and len(dev.val.dataset) == 20
    for a, b in ((classic.val, dev.val), (classic.test, dev.test)):
        xa, ya = zip(*a)
        xb, yb = zip(*b)
        assert torch.equal(torch.cat(ya), torch.cat(yb)) and torch.allclose(torch.cat(xa), torch.cat(xb), atol=1e-6)
    assert dev.mask_indices == classic.mask_indices  # criteria score the same samples with either loader
    for loaders in (classic, dev):
        loaders.set_epoch(2)
    ya = torch.cat([y for _, y in classic.train])
    yb = torch.cat([y for _, y in dev.train])
    assert torch.equal(ya, yb)  # same permutation per epoch
    with pytest.raises(ValueError, match="invalid value 'gpu'"):
        build_loaders(splits, LoaderSettings(batch_size=16, kind="gpu"), mask, seed=5)


def test_device_loader_on_a_dataset_without_uint8_data_is_a_clear_error() -> None:
    splits = data.get("digits")().load()
    with pytest.raises(ValueError, match="dataset.loader 'device' is not supported by dataset 'digits'"):
        build_loaders(splits, LoaderSettings(batch_size=32, kind="device"), MaskDataSettings(per_class_samples=2),
                      name="dataset 'digits'")


def _config(dataset: dict, model: dict, **training) -> dict:
    return {"general": {"experiment": "pbt", "gpu": {"ngpus": 0}}, "dataset": dataset, "model": model,
            "training": {"num_steps": 1, **training, "compressor": {"class": "none"}}}


def test_main_validate_accepts_every_dataset_and_model(tmp_path: Path, capsys) -> None:
    import main

    cfgs = {
        "c10_resnet18": _config({"class": "cifar10", "loader": "device"}, {"class": "ResNet18"}, amp="bf16",
                                channels_last=True, compile=True),
        "c100_vgg19": _config({"class": "CIFAR100", "options": {"padding": 2}}, {"class": "VGG19"}),
        "c10_vit": _config({"class": "cifar10"}, {"class": "vit_small", "options": {"depth": 2}}, amp="fp16"),
        "tiny": _config({"class": "tinyimagenet"}, {"class": "ResNet18_TinyImageNet"}),
        "tiny50": _config({"class": "TinyImageNet"}, {"class": "resnet50_tinyimagenet"}),
        "imagenet": _config({"class": "imagenet"}, {"class": "resnet50_imagenet"}),
        "imagenet_vit": _config({"class": "imagenet"}, {"class": "vit_b_16"}),
        "folder": _config({"class": "imagefolder", "options": {"path": "cifar10-jpeg", "augment": "cifar"}},
                          {"class": "resnet34"}),
    }
    for name, cfg in cfgs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    examples = Path(__file__).resolve().parent.parent / "exp_configs" / "examples"
    assert main.main(["validate", str(tmp_path), str(examples)]) == 0, capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.json").write_text(json.dumps(_config({"class": "cifar10", "loader": "gpu"}, {"class": "resnet18"},
                                                   amp="fp8")))
    (bad / "y.json").write_text(json.dumps(_config({"class": "cifar10", "options": {"paddng": 2}},
                                                   {"class": "resnet18"})))
    capsys.readouterr()
    assert main.main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "dataset.loader: invalid value 'gpu'" in out and "training.amp: invalid value 'fp8'" in out
    assert "dataset.options.paddng: unknown key (did you mean 'padding'?)" in out and "0 valid, 2 invalid" in out


def test_validate_builds_the_model_with_the_dataset_shape(tmp_path: Path, capsys) -> None:
    import main

    (tmp_path / "x.json").write_text(json.dumps(_config({"class": "cifar10"},
                                                        {"class": "vit_small", "options": {"patch_size": 5}})))
    assert main.main(["validate", str(tmp_path)]) == 1
    assert "not divisible by patch size 5" in capsys.readouterr().out


def test_imagefolder_device_loader_materialises_once(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "f", splits=("train", "test"), size=(8, 8), per_class=4)
    splits = data.get("imagefolder")(root=str(tmp_path), path="f", image_size=8, padding=1).load()
    loaders = build_loaders(splits, LoaderSettings(batch_size=5, kind="device"), MaskDataSettings(per_class_samples=1))
    assert len(list(loaders.train)) == 3 and sum(len(y) for _, y in loaders.test) == 12
    assert len(list((tmp_path / "f" / ".pai_cache").glob("uint8-*.npz"))) == 2
    xs = torch.cat([x for x, _ in loaders.test])
    ref = torch.stack([splits.test[i][0] for i in range(12)])
    assert torch.allclose(xs, ref, atol=1e-6)


def test_the_device_loader_builds_no_dataloader_but_the_mask_datas(tmp_path: Path, monkeypatch) -> None:
    import data.loaders as loaders_module

    write_image_tree(tmp_path / "f", splits=("train", "test"), size=(8, 8), per_class=4)
    splits = data.get("imagefolder")(root=str(tmp_path), path="f", image_size=8, padding=1).load()
    built = []

    class Counting(loaders_module.DataLoader):
        def __init__(self, dataset, *args, **kwargs) -> None:
            built.append(dataset)
            super().__init__(dataset, *args, **kwargs)

    monkeypatch.setattr(loaders_module, "DataLoader", Counting)
    mask = MaskDataSettings(per_class_samples=1)
    dev = build_loaders(splits, LoaderSettings(batch_size=5, kind="device"), mask)
    assert len(built) == 1 and built[0] is dev.mask.dataset
    classic = build_loaders(splits, LoaderSettings(batch_size=5), mask)
    assert len(built) == 5 and classic.mask_indices == dev.mask_indices
