"""Training-loop speed: images/s of ResNet18 on CIFAR-shaped data, printed as one table.

    python benchmarks/training.py            # full run (a few minutes on a 2-core CPU)
    python benchmarks/training.py --quick    # smoke run (well under a minute)

Every row is timed step by step, the rows interleaved step by step, and reports batch size / median
step time, so a shared machine's noise hits all rows alike and sporadic stalls do not count:
- model step only (inputs already on the device): dense vs 90%-masked (MaskEnforcer: fused foreach
  multiplies of gradients and weights); the masked/dense ratio is the masking overhead (target < 5%),
  also given directly as the median time of the mask enforcement alone relative to a dense step;
- loader only: the classic DataLoader (uint8 array -> PIL -> RandomCrop/flip/ToTensor/Normalize, as
  data/datasets/cifar.py) vs the device-resident loader (data/device_loader.py);
- full masked training step with each loader;
- on CUDA also bf16 autocast + channels_last, and the time of one CIFAR-10-sized epoch (50,000 images).
The data are synthetic uint8 tensors shaped like CIFAR-10 (50,000 x 32 x 32 x 3, 10 classes), so the
benchmark needs no download.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import compressors  # noqa: E402
import models  # noqa: E402
from data.arrays import ArrayDataset  # noqa: E402
from data.datasets.cifar import Cifar10, cifar_transforms  # noqa: E402
from data.device_loader import DeviceLoader  # noqa: E402
from data.loaders import EpochShuffler  # noqa: E402
from engine.loop import MaskEnforcer, autocast, prepare_model  # noqa: E402


def random_masks(model: nn.Module, sparsity: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random masks keeping (1 - sparsity) of every prunable weight tensor."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: (torch.rand(params[n].shape, generator=g) >= sparsity).float()
            for n in compressors.prunable_names(model)}


class Stepper:
    """One SGD training step of ``model`` (optionally masked, autocast, channels_last)."""

    def __init__(self, device: torch.device, sparsity: float, amp: str = "none", channels_last: bool = False) -> None:
        torch.manual_seed(0)
        self.model = models.build("resnet18", num_classes=10, input_shape=(3, 32, 32)).to(device)
        self.net = prepare_model(self.model, device, channels_last=channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.enforcer = MaskEnforcer(self.model, random_masks(self.model, sparsity)) if sparsity > 0 else None
        if self.enforcer:
            self.enforcer.apply_to_weights()
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.loss_fn = nn.CrossEntropyLoss()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            loss = self.loss_fn(self.net(x), y)
        loss.backward()
        if self.enforcer:
            self.enforcer.apply_to_grads()
        self.opt.step()
        if self.enforcer:
            self.enforcer.apply_to_weights()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds taken by one call of ``fn`` (device synchronised before and after)."""
    sync(device)
    tic = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - tic


def cycle(loader: Iterable, set_epoch: Callable[[int], None]) -> Iterator:
    epoch = 0
    while True:
        set_epoch(epoch)
        yield from loader
        epoch += 1


@dataclass
class Bench:
    """What the interleaved timing runs: the jobs by row name, the steppers, the device loader."""

    device: torch.device
    batch: int
    workers: int
    steppers: dict[str, Stepper]
    jobs: dict[str, Callable[[], None]]
    device_loader: DeviceLoader


BASELINES = {"model step": "model step, dense", "loader only": "loader only, classic DataLoader",
             "train step": "train step (masked), classic DataLoader"}  # the ratio column's reference per kind


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 16, 4 steps")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 64 on the CPU, 16 quick")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row, interleaved (default 50 on "
                                                                "CUDA, 12 on the CPU, 4 quick)")
    parser.add_argument("--workers", type=int, default=0, help="classic DataLoader workers")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:i]")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (16 if args.quick else 256 if cuda else 64)
    args.steps = args.steps or (4 if args.quick else 50 if cuda else 12)
    return args


def build(args: argparse.Namespace) -> Bench:
    """CIFAR-shaped synthetic data behind both loaders, the steppers and one timing job per row."""
    device, bs = torch.device(args.device), args.batch_size
    cuda = device.type == "cuda"
    n_data = 2048 if args.quick else 50_000
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_data, 32, 32, 3), dtype=np.uint8)
    targets = rng.integers(0, 10, n_data).astype(np.int64)
    mean, std = Cifar10.mean, Cifar10.std
    train_tf, _ = cifar_transforms(mean, std, 4, True)
    sampler = EpochShuffler(n_data, 0)
    classic = DataLoader(ArrayDataset(images, targets, train_tf), batch_size=bs, sampler=sampler,
                         num_workers=args.workers, pin_memory=cuda, drop_last=True,
                         persistent_workers=args.workers > 0)
    device_loader = DeviceLoader(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(targets),
                                 batch_size=bs, device=device, mean=mean, std=std, train=True, seed=0, padding=4,
                                 flip=True, drop_last=True)
    classic_it = cycle(classic, sampler.set_epoch)
    device_it = cycle(device_loader, device_loader.set_epoch)
    x_fixed, y_fixed = next(iter(device_loader))

    steppers = {"dense": Stepper(device, 0.0), "masked": Stepper(device, 0.9)}
    if cuda:
        steppers["masked_bf16_cl"] = Stepper(device, 0.9, amp="bf16", channels_last=True)

    def model_only(step: Stepper) -> Callable[[], None]:
        return lambda: step(x_fixed, y_fixed)

    def loader_only(it: Iterator) -> Callable[[], None]:
        return lambda: next(it)[0].to(device, non_blocking=True)

    def end_to_end(it: Iterator, step: Stepper) -> Callable[[], None]:
        def run() -> None:
            x, y = next(it)
            step(x, y)
        return run

    jobs: dict[str, Callable[[], None]] = {f"model step, {k}": model_only(s) for k, s in steppers.items()}
    jobs["loader only, classic DataLoader"] = loader_only(classic_it)
    jobs["loader only, device loader"] = loader_only(device_it)
    jobs["train step (masked), classic DataLoader"] = end_to_end(classic_it, steppers["masked"])
    jobs["train step (masked), device loader"] = end_to_end(device_it, steppers["masked"])
    if cuda:
        jobs["train step (masked, bf16+cl), device loader"] = end_to_end(device_it, steppers["masked_bf16_cl"])
    return Bench(device, bs, args.workers, steppers, jobs, device_loader)


def measure(bench: Bench, steps: int) -> tuple[dict[str, list[float]], list[float]]:
    """(seconds of every job's ``steps`` timed calls, seconds of the mask enforcement alone), each row's
    calls interleaved with the others' after two warm-up calls (allocator, cudnn autotune, first epoch)."""
    for fn in bench.jobs.values():
        fn()
        fn()
    enforcer = bench.steppers["masked"].enforcer
    assert enforcer is not None

    def enforce() -> None:
        enforcer.apply_to_grads()
        enforcer.apply_to_weights()

    times: dict[str, list[float]] = {k: [] for k in bench.jobs}
    enforce_times: list[float] = []
    for _ in range(steps):
        for name, fn in bench.jobs.items():
            times[name].append(timed(fn, bench.device))
        enforce_times.append(timed(enforce, bench.device))
    return times, enforce_times


def rates(bench: Bench, times: dict[str, list[float]]) -> dict[str, float]:
    """Images/s of every row: batch size / median step time."""
    return {k: bench.batch / statistics.median(v) for k, v in times.items()}


def ratios(med: dict[str, float]) -> dict[str, float]:
    """Every row's images/s relative to its kind's baseline row (BASELINES)."""
    return {name: value / med[BASELINES[name.split(",")[0].split(" (")[0]]] for name, value in med.items()}


def print_table(bench: Bench, med: dict[str, float], steps: int) -> None:
    device = bench.device
    print(f"\nResNet18, CIFAR-shaped synthetic data, batch {bench.batch}, {steps} interleaved steps per row (median), "
          f"device {device}{'' if device.type == 'cuda' else f' ({torch.get_num_threads()} threads)'}, "
          f"classic workers {bench.workers}\n")
    width = max(len(k) for k in med) + 2
    print(f"{'measurement':<{width}}{'images/s':>12}{'ratio':>9}   baseline")
    print("-" * (width + 12 + 9 + 25))
    for name, ratio in ratios(med).items():
        kind = name.split(",")[0].split(" (")[0]
        print(f"{name:<{width}}{med[name]:>12,.1f}{ratio:>9.3f}   {BASELINES[kind]}")


def print_summary(bench: Bench, med: dict[str, float], times: dict[str, list[float]],
                  enforce_times: list[float]) -> None:
    overhead = 1 - med["model step, masked"] / med["model step, dense"]
    print(f"\nmasking overhead (1 - masked/dense model-step throughput): {overhead * 100:+.1f}% (target < 5%)")
    dense_step = statistics.median(times["model step, dense"])
    enforce_s = statistics.median(enforce_times)
    print(f"mask enforcement alone (grads + weights, 11.2M params): {enforce_s * 1e3:.1f} ms per step = "
          f"{enforce_s / dense_step * 100:.2f}% of a dense step ({dense_step * 1e3:,.0f} ms)")
    speedup = med["train step (masked), device loader"] / med["train step (masked), classic DataLoader"]
    print(f"device loader vs classic DataLoader, full step: x{speedup:.2f}")
    best = max(v for k, v in med.items() if k.startswith("train step"))
    label = "measured rate" if bench.device.type == "cuda" else "extrapolated from the measured rate"
    print(f"one CIFAR-10 epoch (50,000 images) at the best full-step rate: {50_000 / best:,.0f} s ({label})")


def measured_epoch(bench: Bench) -> None:
    """On CUDA: one full epoch of the masked bf16 + channels_last step through the device loader."""
    step, device, loader = bench.steppers["masked_bf16_cl"], bench.device, bench.device_loader
    loader.set_epoch(1000)
    sync(device)
    tic = time.perf_counter()
    seen = 0
    for x, y in loader:
        step(x, y)
        seen += len(y)
    sync(device)
    print(f"measured full epoch ({seen:,} images, masked, bf16+channels_last, device loader): "
          f"{time.perf_counter() - tic:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = build(args)
    times, enforce_times = measure(bench, args.steps)
    med = rates(bench, times)
    print_table(bench, med, args.steps)
    print_summary(bench, med, times, enforce_times)
    if bench.device.type == "cuda":
        measured_epoch(bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
