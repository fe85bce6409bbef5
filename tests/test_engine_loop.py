"""Training-loop options: autocast (bf16 / fp16 with a checkpointed gradient scaler), channels_last,
compile (a no-op with a notice on the CPU), the masks under all of them, and an exact resume of a pbt
run on CIFAR-format files with the device-resident loader."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from datafiles import write_cifar10
from helpers import interrupt_after
from torch import nn

from engine.loop import MaskEnforcer, autocast, evaluate, make_scaler, prepare_model, train_epoch
from launch.runner import run_config
from utils.io import load_torch

CPU = torch.device("cpu")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _batches(n: int = 4, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {n: (torch.rand(p.shape, generator=g) > 0.7).float() for n, p in model.named_parameters()
            if n in ("0.weight", "3.weight", "7.weight")}


@pytest.mark.parametrize("amp, channels_last, clip", [("bf16", False, None), ("fp16", True, 1.0), ("none", True, 0.5)])
def test_masked_weights_stay_exactly_zero_under_every_loop_option(amp: str, channels_last: bool, clip) -> None:
    model = _net()
    train_model = prepare_model(model, CPU, channels_last=channels_last)
    masks = _masks(model)
    enforcer = MaskEnforcer(model, masks)
    enforcer.apply_to_weights()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = make_scaler(CPU, amp)
    assert (scaler is not None) == (amp == "fp16")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = train_epoch(train_model, _batches(), nn.CrossEntropyLoss(), opt, CPU, enforcer, clip, amp=amp,
                        scaler=scaler, channels_last=channels_last)
    assert stats.images_per_s > 0 and 0 <= stats.acc <= 1 and stats.loss > 0
    params = dict(model.named_parameters())
    for n, m in masks.items():
        assert torch.all(params[n][m == 0] == 0), n  # exactly zero, not just small
        assert not torch.equal(params[n][m == 1], before[n][m == 1])  # the kept weights trained
        assert params[n].dtype == torch.float32
    if channels_last:
        assert params["0.weight"].is_contiguous(memory_format=torch.channels_last)
        assert enforcer.masks[0].is_contiguous(memory_format=torch.channels_last)
    if scaler is not None:
        assert scaler.get_scale() > 0 and scaler.state_dict()["_growth_tracker"] >= 1
    metrics = evaluate(train_model, _batches(2), nn.CrossEntropyLoss(), CPU, 4, amp=amp, channels_last=channels_last)
    assert 0 <= metrics["acc"] <= 1 and metrics["loss"] > 0


def test_channels_last_and_bf16_track_the_plain_fp32_loop() -> None:
    results = []
    for amp, cl in (("none", False), ("none", True), ("bf16", False)):
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        train_epoch(prepare_model(model, CPU, channels_last=cl), _batches(2), nn.CrossEntropyLoss(), opt, CPU,
                    amp=amp, channels_last=cl)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-5)  # same maths, other memory layout
    assert torch.allclose(results[0], results[2], atol=2e-2) and not torch.equal(results[0], results[2])


def test_autocast_dtypes_and_invalid_amp() -> None:
    with autocast(CPU, "bf16"):
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast(CPU, "none"):
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="training.amp: invalid value 'fp8'"):
        autocast(CPU, "fp8")


def test_compile_is_a_noop_with_a_notice_on_the_cpu() -> None:
    model, notes = _net(), []
    assert prepare_model(model, CPU, compile=True, log=notes.append) is model
    assert notes and "CPU" in notes[0]


def test_divergence_is_detected() -> None:
    from engine.loop import TrainingDiverged

    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    bad = [(torch.full((4, 3, 8, 8), float("nan")), torch.zeros(4, dtype=torch.int64))]
    with pytest.raises(TrainingDiverged):
        train_epoch(model, bad, nn.CrossEntropyLoss(), opt, CPU)


def _cifar_config(tmp_path: Path, **training) -> Path:
    cfg = {
        "general": {"id": "tiny_cifar", "experiment": "pbt", "seed": 0, "gpu": {"ngpus": 0}},
        "dataset": {"class": "cifar10", "root": str(tmp_path / "datasets"), "download": False, "batch_size": 16,
                    "loader": "device", "train4val": True},
        "model": {"class": "small_cnn", "options": {"width": 4}},
        "training": {"num_steps": 2, **training,
                     "optimizer": {"class": "sgd", "learning_rate": 0.05,
                                   "kwargs": {"momentum": 0.9, "w_decay": 0.0005, "scheduler": "cosine"}},
                     "compressor": {"class": "magnitude", "sparsity": 0.5, "per_class_samples": 2}},
    }
    path = tmp_path / "configs" / "tiny_cifar.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def test_pbt_with_device_loader_and_fp16_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    write_cifar10(tmp_path / "datasets", monkeypatch, per_batch=16, n_test=20)
    cfg = _cifar_config(tmp_path, amp="fp16", channels_last=True)
    reference = run_config(cfg, results=tmp_path / "a", log=lambda s: None)
    assert reference.status == "completed", reference.reason

    interrupt_after(cfg, tmp_path / "b", 1)
    run_folder = Path(reference.run_dir.replace(str(tmp_path / "a"), str(tmp_path / "b")))
    ckpt = load_torch(run_folder / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0
    resumed = run_config(cfg, results=tmp_path / "b", log=lambda s: None)
    assert resumed.status == "completed"
    a = load_torch(Path(reference.run_dir) / "final_model.pt")
    b = load_torch(run_folder / "final_model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    mask = load_torch(run_folder / "mask.pt")
    for name, m in mask.items():
        assert torch.all(b[name][~m] == 0)
    hist = json.loads((run_folder / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2] and all(r["images_per_s"] > 0 for r in hist)


def test_device_and_classic_loaders_train_the_same_samples(tmp_path: Path, monkeypatch) -> None:
    """Same permutation per epoch; only the augmentation draws differ, so without augmentation the two
    loaders give identical training."""
    write_cifar10(tmp_path / "datasets", monkeypatch, per_batch=16, n_test=20)
    finals = []
    for loader in ("classic", "device"):
        cfg = json.loads(_cifar_config(tmp_path).read_text())
        cfg["dataset"].update({"loader": loader, "options": {"augment": False}})
        cfg["training"]["num_steps"] = 1
        path = tmp_path / "configs" / f"{loader}.json"
        path.write_text(json.dumps(copy.deepcopy(cfg)))
        out = run_config(path, results=tmp_path / loader, log=lambda s: None)
        assert out.status == "completed", out.reason
        finals.append(load_torch(Path(out.run_dir) / "final_model.pt"))
    assert all(torch.allclose(finals[0][k].float(), finals[1][k].float(), atol=1e-5) for k in finals[0])
