"""GPU check: every CUDA path of the framework checked and the paper runs' speed measured, in one command.

    python benchmarks/gpu_check.py --out results/gpu_check.json            # one H100/H200: under 8 minutes
    python benchmarks/gpu_check.py --quick --device cpu --out /tmp/q.json  # tiny model and data: seconds

Sections, in the order they run; each may run until its share of ``--budget`` seconds is used (time a
section leaves passes on to the next); an item that does not fit is listed as skipped, never estimated:

1. **correctness** on the device (pass / FAIL):
   - every registered pruning criterion's scores on the device against the CPU, same model (a copy), mask
     data and options: ``max |device - cpu| / max |cpu| <= --tol`` (float32, TF32 off), and the kept masks
     at 90% sparsity; SynFlow (thresholds compound over its rounds) by kept-mask agreement >= 0.99.
     Hutchinson criteria get the same probes on both sides: the device run draws them from a CPU generator
     with the criterion's seed (CUDA's generator gives other numbers for the same seed), see
     :class:`CpuDrawnProbes`;
   - the estimator routes agree on the device: per-batch gradients (Fisher diagonal, mean gradient) of
     ``hooks`` and ``vmap`` against ``loop``, Hutchinson ``probes`` and ``vmap`` against ``loop``;
   - device-loader batches lie in torchvision's distribution: each augmented image is one of the outputs
     torchvision's RandomCrop(padding) + RandomHorizontalFlip can give for its source image, offsets and
     flips are uniform (within 5 sigma), and the device gives the CPU loader's batches exactly;
   - structured pruning: the compact model (structures cut out) computes what the masked model computes on
     the device (channels of the correctness model, heads + MLP neurons of a small ViT);
   - pruned weights stay exactly zero after masked training steps (SGD, momentum, weight decay) under fp32,
     bf16, fp16 + GradScaler, channels_last, bf16 + channels_last and, on CUDA, torch.compile (checked on
     the compiled speed run (d));
2. **training** speed of the 90%-masked model through ``engine.loop.train_epoch`` on CIFAR-shaped random
   uint8 data (ResNet18, batch 512, 50,000 + 10,000 images): (a) DataLoader with PIL torchvision transforms on
   2 workers, fp32 (the official code's pipeline), (b) device loader, fp32, (c) + bf16 + channels_last,
   (d) + torch.compile (CUDA only); then **epoch**: a full training epoch plus the evaluation
   (``engine.loop.evaluate``) with the fastest setting, twice (the first compiles any new shapes), and the
   peak GPU memory of that run;
3. **scoring** speed: every criterion on ResNet18 with 100 mask samples at batch 1 against the naive
   per-batch loops of ``benchmarks/scoring.py`` on the same device;
4. **projection** (labelled as such): GPU-hours of the paper table (195 runs x 160 epochs) from the measured
   epoch + evaluation time, warm-up and mean scoring time; how many runs fit in GPU memory at once.

The rows are printed as they come and as one table at the end; all rows with their numbers are written as
JSON to ``--out`` after every section, so a run cut short keeps what it measured.  Exit code 1 when a
correctness check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import itertools
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402

import compressors  # noqa: E402
import models  # noqa: E402
from autosparse.predictor import build_mlp, make_settings, predict_tensor, save_predictor  # noqa: E402
from benchmarks.scoring import (  # noqa: E402
    HUTCHINSON,
    LOSS,
    NAIVE,
    deviation,
    fmt,
    make_data,
    measure,
    naive_grads,
    reference_scores,
    split,
)
from benchmarks.training import cycle, random_masks  # noqa: E402
from compressors import estimators  # noqa: E402
from compressors.base import preserved_state  # noqa: E402
from compressors.structures import find_structures  # noqa: E402
from data.arrays import ArrayDataset  # noqa: E402
from data.datasets.cifar import Cifar10, cifar_transforms  # noqa: E402
from data.device_loader import DeviceLoader  # noqa: E402
from data.loaders import EpochShuffler  # noqa: E402
from engine.checkpoint import save_checkpoint  # noqa: E402
from engine.loop import EpochStats, MaskEnforcer, evaluate, make_scaler, prepare_model, train_epoch  # noqa: E402

SECTIONS = ("correctness", "training", "epoch", "scoring", "projection")  # table order
SHARES = {"correctness": 0.25, "training": 0.40, "scoring": 0.35}  # of --budget; the epoch is in "training"
ORDER = ["magnitude", "random", "grad_norm", "snip", "grasp", "fisher_diag", "fisher_pruner", "fts", "autosparse",
         "synflow", "hutch_diag", "hutch_pruning", "hts"]  # cheap first: the costly loops are cut first
SPARSITY = 0.9
GOAL_HOURS, GOAL_SPEEDUP = 24.0, 5.0
Result = tuple[str, str, dict[str, Any]]  # (value, status, numbers)


# ------------------------------------------------------------------------------------------ plan, rows
@dataclass(frozen=True)
class Plan:
    """The sizes of every section: the issue's by default, tiny ones for ``--quick``."""

    corr_model: str = "resnet18"
    corr_options: dict = field(default_factory=dict)
    corr_shape: tuple[int, ...] = (3, 32, 32)
    corr_samples: int = 8
    corr_batch: int = 2
    probes: int = 3
    rounds: int = 10
    loader_images: int = 4000
    loader_shape: tuple[int, ...] = (3, 32, 32)
    loader_padding: int = 4
    zero_batch: int = 16
    zero_steps: int = 4
    train_model: str = "resnet18"
    train_options: dict = field(default_factory=dict)
    batch: int = 512
    train_images: int = 50_000
    eval_images: int = 10_000
    warmup_steps: int = 3
    timed_steps: int = 30
    workers: int = 2
    score_model: str = "resnet18"
    score_options: dict = field(default_factory=dict)
    score_shape: tuple[int, ...] = (3, 32, 32)
    score_samples: int = 100
    score_probes: int = 10
    score_rounds: int = 100
    budget: float = 400.0
    runs: int = 195
    epochs: int = 160
    quick: bool = False


TINY = {"width": 8}
QUICK = Plan(corr_model="small_cnn", corr_options=TINY, corr_shape=(3, 8, 8), probes=2, rounds=3, loader_images=1000,
             loader_shape=(3, 6, 6), loader_padding=2, zero_batch=8, zero_steps=3, train_model="small_cnn",
             train_options=TINY, batch=32, train_images=256, eval_images=64, warmup_steps=2, timed_steps=3,
             score_model="small_cnn", score_options=TINY, score_shape=(3, 8, 8), score_samples=10, score_probes=2,
             score_rounds=3, budget=90.0, quick=True)


@dataclass
class Row:
    """One line of the table: what was checked or measured, its result and status, and its numbers."""

    section: str
    item: str
    value: str
    status: str  # pass | FAIL | measured | projection | error | skipped: <why>
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ctx:
    """What every section gets: the plan, the device, its deadline and the facts earlier sections found."""

    plan: Plan
    device: torch.device
    predictor: Path
    tol: float
    deadline: float = math.inf
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def run_item(rows: list[Row], section: str, item: str, ctx: Ctx, fn: Callable[[], Result]) -> Row:
    """Append the row of ``fn()`` (skipped past the deadline; an exception becomes a FAIL / error row)."""
    tic = time.perf_counter()
    if ctx.left() <= 0:
        row = Row(section, item, "-", "skipped: time budget")
    else:
        try:
            row = Row(section, item, *fn())
        except Exception as exc:  # noqa: BLE001 - one broken item must not lose the whole run
            msg = (str(exc).strip().splitlines() or [""])[0][:200]
            row = Row(section, item, f"{type(exc).__name__}: {msg}", "FAIL" if section == "correctness" else "error")
    row.numbers["item_s"] = time.perf_counter() - tic
    rows.append(row)
    print(f"  [{section}] {row.item}: {row.value} ({row.status}, {row.numbers['item_s']:.1f} s)", flush=True)
    return row


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(name: str, options: dict, shape: tuple[int, ...], device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return models.build(name, num_classes=10, input_shape=shape, **options).to(device)


# -------------------------------------------------------------------------------------- criteria helpers
def pruning_criteria() -> list[str]:
    """Every registered criterion that prunes, once per class (aliases dropped), cheap ones first."""
    found: dict[type, str] = {}
    for name in compressors.names():
        cls = compressors.get(name)
        if cls.prunes:
            found.setdefault(cls, cls.registered_name or name)
    rank = {n: i for i, n in enumerate(ORDER)}
    return sorted(found.values(), key=lambda n: (rank.get(n, len(ORDER)), n))


def criterion_options(name: str, probes: int, rounds: int, predictor: Path) -> dict[str, Any]:
    """Options that make both sides comparable: a fixed ``seed`` for every stochastic criterion."""
    if name in HUTCHINSON:
        return {"probes": probes, "seed": 0}
    seeded = {"seed": 0} if "seed" in {f.name for f in dataclasses.fields(compressors.get(name).Options)} else {}
    return {"synflow": {"rounds": rounds}, "autosparse": {"predictor": str(predictor)}}.get(name, seeded)


def write_predictor(folder: Path) -> Path:
    """An AutoSparse predictor with random weights (its scores are compared and timed, never judged)."""
    torch.manual_seed(0)
    path = folder / "predictor.pt"
    save_predictor(path, build_mlp(2, [16]), make_settings("standardized", [16]), {"note": "gpu_check: random"})
    return path


def score(name: str, opts: dict, model: nn.Module, batches: list) -> dict[str, torch.Tensor]:
    return dict(compressors.build(name, **opts).score(model, batches, LOSS, sparsity=SPARSITY))


def on_cpu(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().float().cpu() for n, t in scores.items()}


def mask_agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Fraction of entries on which the global top-(1 - SPARSITY) masks of ``a`` and ``b`` agree."""
    ma, mb = compressors.select(on_cpu(a), SPARSITY), compressors.select(on_cpu(b), SPARSITY)
    return sum(int((ma[n] == mb[n]).sum()) for n in mb) / max(sum(mb[n].numel() for n in mb), 1)


PLAIN_PROBES = estimators.RademacherProbes


class CpuDrawnProbes(PLAIN_PROBES):
    """The probe stream a CPU run draws, on any device: values come from a CPU generator seeded with the
    given (freshly seeded) generator's seed and are copied into the device buffer."""

    def __init__(self, shapes: Any, generator: torch.Generator, device: torch.device, dtype: torch.dtype,
                 slots: int = 1) -> None:
        super().__init__(shapes, generator, device, dtype, slots)
        cpu = torch.Generator().manual_seed(generator.initial_seed())
        self.twin = PLAIN_PROBES(shapes, cpu, torch.device("cpu"), dtype, slots)

    def draw(self, count: int = 1) -> torch.Tensor:
        out = super().draw(count)
        out.copy_(self.twin.draw(count))
        return out


@contextlib.contextmanager
def cpu_drawn_probes() -> Iterator[None]:
    with mock.patch.object(estimators, "RademacherProbes", CpuDrawnProbes):
        yield


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off for convolutions and matmuls (cuDNN uses TF32 by default), restored on exit."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# ------------------------------------------------------------------------------ correctness: criteria
def compare_scores(name: str, got: dict, ref: dict, tol: float) -> Result:
    got, ref = on_cpu(got), on_cpu(ref)
    finite = all(bool(torch.isfinite(t).all()) for t in got.values())
    dev = deviation(got, ref) if finite else math.inf
    agree = mask_agreement(got, ref)
    if name == "synflow":
        ok, rule = finite and agree >= 0.99, "mask agreement >= 0.99"
    else:
        ok, rule = finite and dev <= tol, f"tol {tol:g}"
    return (f"max dev {dev:.1e}, kept-mask agreement {agree:.4f} ({rule})", verdict(ok),
            {"max_dev": dev, "mask_agreement": agree, "finite": finite})


def check_criteria(ctx: Ctx) -> list[Row]:
    p, rows = ctx.plan, []
    cpu_model = build_model(p.corr_model, p.corr_options, p.corr_shape, torch.device("cpu"))
    dev_model = copy.deepcopy(cpu_model).to(ctx.device)
    x, y = make_data(p.corr_samples, 10, p.corr_shape, torch.device("cpu"))
    cpu_b = split(x, y, p.corr_batch)
    dev_b = [(a.to(ctx.device), b.to(ctx.device)) for a, b in cpu_b]

    def probes_faithful() -> Result:  # the harness itself: CPU-drawn probes = the CPU run's own probes
        opts = criterion_options("hts", p.probes, p.rounds, ctx.predictor)
        plain = score("hts", opts, cpu_model, cpu_b[:1])
        with cpu_drawn_probes():
            patched = score("hts", opts, cpu_model, cpu_b[:1])
        same = all(torch.equal(plain[n], patched[n]) for n in plain)
        return f"identical: {same}", verdict(same), {"identical": same}

    run_item(rows, "correctness", "CPU-drawn Hutchinson probes = the CPU run's probes (hts, cpu)", ctx,
             probes_faithful)
    with cpu_drawn_probes(), strict_fp32():
        for name in pruning_criteria():
            opts = criterion_options(name, p.probes, p.rounds, ctx.predictor)
            run_item(rows, "correctness", f"{name} scores: {ctx.device.type} vs cpu ({p.corr_model}, "
                     f"{p.corr_samples} samples, batch {p.corr_batch})", ctx,
                     lambda n=name, o=opts: compare_scores(n, score(n, o, dev_model, dev_b),
                                                           score(n, o, cpu_model, cpu_b), ctx.tol))
    return rows


def check_routes(ctx: Ctx) -> list[Row]:
    p, rows = ctx.plan, []
    model = build_model(p.corr_model, p.corr_options, p.corr_shape, ctx.device)
    names = compressors.prunable_names(model)
    batches = split(*make_data(p.corr_samples, 10, p.corr_shape, ctx.device), p.corr_batch)

    def fisher(route: str) -> estimators.FisherResult:
        return estimators.fisher_diagonal(model, names, batches, LOSS, route=route)

    def hutch(route: str) -> estimators.HutchinsonResult:
        gen = torch.Generator(device=ctx.device).manual_seed(0)
        return estimators.hutchinson_diagonal(model, names, batches, LOSS, probes=p.probes, generator=gen,
                                              temperature=200.0, route=route)

    def agree(pairs: list[tuple[dict, dict]]) -> Result:
        dev = max(deviation(a, b) for a, b in pairs)
        return f"max dev {dev:.1e} (tol {ctx.tol:g})", verdict(dev <= ctx.tol), {"max_dev": dev}

    def fisher_vs(ref: estimators.FisherResult, route: str) -> Result:
        got = fisher(route)
        return agree([(got.fisher, ref.fisher), (got.mean_grad, ref.mean_grad)])

    def hutch_vs(ref: estimators.HutchinsonResult, route: str) -> Result:
        got = hutch(route)
        return agree([(got.diag, ref.diag), (got.mean_grad, ref.mean_grad)])

    dev = ctx.device.type
    with preserved_state(model), strict_fp32():
        fref = fisher("loop")
        for route in ("hooks", "vmap"):
            run_item(rows, "correctness", f"per-batch gradients on {dev}: {route} vs loop (Fisher diagonal, mean "
                     "gradient)", ctx, lambda r=route: fisher_vs(fref, r))
        href = hutch("loop")
        for route in ("probes", "vmap"):
            run_item(rows, "correctness", f"Hutchinson diagonal on {dev}: {route} vs loop (same probes; diagonal, "
                     "mean gradient)", ctx, lambda r=route: hutch_vs(href, r))
    return rows


# ------------------------------------------------------------------------------ correctness: the loader
def torchvision_matches(src: torch.Tensor, out: torch.Tensor, padding: int) -> tuple[list, torch.Tensor]:
    """(keys (top, left, flip) of torchvision's RandomCrop(padding) + flip outputs, index of the first key
    whose output for ``src[i]`` equals ``out[i]``, -1 if none) for uint8 batches (N, C, H, W)."""
    h, w = src.shape[-2:]
    padded = TF.pad(src, [padding])  # zero fill, as RandomCrop(padding=p)
    keys, hits = [], []
    for top, left in itertools.product(range(2 * padding + 1), repeat=2):
        crop = TF.crop(padded, top, left, h, w)
        for flip in (False, True):
            cand = TF.hflip(crop) if flip else crop
            keys.append((top, left, flip))
            hits.append((cand == out).flatten(1).all(1))
    hit = torch.stack(hits)
    return keys, torch.where(hit.any(0), hit.int().argmax(0), torch.full_like(hit[0], -1, dtype=torch.int64))


def uniformity(keys: list, first: torch.Tensor, padding: int) -> tuple[float, bool]:
    """(largest |z| of the top-offset, left-offset and flip counts against uniform, every value seen)."""
    k = np.array([keys[i] for i in first.tolist() if i >= 0], dtype=np.int64).reshape(-1, 3)
    n, bins = len(k), 2 * padding + 1
    z, seen = [], True
    for col, m in ((0, bins), (1, bins), (2, 2)):
        counts = np.bincount(k[:, col], minlength=m)
        q = 1 / m
        z.append(float(np.max(np.abs(counts - n * q)) / math.sqrt(n * q * (1 - q))))
        seen &= bool(counts.min() > 0)
    return max(z), seen


def loader_batches(images: torch.Tensor, device: torch.device, padding: int) -> tuple[DeviceLoader, torch.Tensor]:
    c = images.shape[1]
    loader = DeviceLoader(images, torch.zeros(len(images), dtype=torch.int64), batch_size=256, device=device,
                          mean=(0.0,) * c, std=(1.0,) * c, train=True, seed=3, padding=padding, flip=True)
    loader.set_epoch(1)
    return loader, torch.cat([x for x, _ in loader]).cpu()


def check_loader(ctx: Ctx) -> list[Row]:
    p, rows, dev = ctx.plan, [], ctx.device.type
    images = torch.randint(0, 256, (p.loader_images, *p.loader_shape), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    loader, out = loader_batches(images, ctx.device, p.loader_padding)
    keys, first = torchvision_matches(images[loader.order()], torch.round(out * 255).to(torch.uint8), p.loader_padding)
    matched = int((first >= 0).sum())
    run_item(rows, "correctness", f"device loader on {dev}: every image one of torchvision's RandomCrop"
             f"({p.loader_padding}) + flip outputs of its source", ctx,
             lambda: (f"{matched}/{len(first)} images", verdict(matched == len(first)), {"matched": matched}))

    def uniform() -> Result:
        z, seen = uniformity(keys, first, p.loader_padding)
        return (f"max |z| {z:.2f} (< 5), every offset and flip seen: {seen}", verdict(z < 5 and seen),
                {"max_abs_z": z, "all_seen": seen})

    run_item(rows, "correctness", f"device loader on {dev}: crop offsets and flips uniform", ctx, uniform)
    run_item(rows, "correctness", f"device loader on {dev}: the same batches as on the cpu", ctx,
             lambda: (lambda same: (f"identical: {same}", verdict(same), {"identical": same}))(
                 torch.equal(out, loader_batches(images, torch.device("cpu"), p.loader_padding)[1])))
    return rows


# -------------------------------------------------------------------------------- masked training steps
class Trainer:
    """A 90%-masked model with SGD (lr 0.03, momentum 0.9, weight decay 5e-4, as the paper) trained through
    ``engine.loop.train_epoch`` with the given precision, memory format and compilation."""

    def __init__(self, name: str, options: dict, shape: tuple[int, ...], device: torch.device, *, amp: str = "none",
                 channels_last: bool = False, compile: bool = False) -> None:
        self.model = build_model(name, options, shape, device)
        self.masks = {n: m.to(device) for n, m in random_masks(self.model, SPARSITY).items()}
        self.net = prepare_model(self.model, device, channels_last=channels_last, compile=compile, log=lambda s: None)
        self.enforcer = MaskEnforcer(self.model, self.masks)
        self.enforcer.apply_to_weights()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.03, momentum=0.9, weight_decay=5e-4)
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.scaler = make_scaler(device, amp)

    def steps(self, batches: Iterable, total: int) -> EpochStats:
        return train_epoch(self.net, batches, LOSS, self.opt, self.device, self.enforcer, amp=self.amp,
                           scaler=self.scaler, channels_last=self.channels_last, total=total)

    def evaluate(self, loader: Iterable) -> dict[str, float]:
        return evaluate(self.net, loader, LOSS, self.device, 10, amp=self.amp, channels_last=self.channels_last)

    def weights(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {n: params[n].detach().clone() for n in self.masks}

    def pruned_nonzero(self) -> int:
        params = dict(self.model.named_parameters())
        return sum(int(((params[n] != 0) & (m == 0)).sum()) for n, m in self.masks.items())


def zero_check(tr: Trainer, batches: Iterable, steps: int) -> Result:
    """Train ``steps`` steps; pass when no pruned weight is nonzero and the kept weights did train."""
    before = tr.weights()
    stats = tr.steps(batches, steps)
    after = tr.weights()
    moved = sum(int(((after[n] != before[n]) & (m != 0)).sum()) for n, m in tr.masks.items())
    kept = sum(int((m != 0).sum()) for m in tr.masks.values())
    bad = tr.pruned_nonzero()
    ok = bad == 0 and moved > 0 and math.isfinite(stats.loss)
    return (f"pruned weights nonzero: {bad}, kept weights changed: {moved / kept:.1%} ({steps} steps, loss "
            f"{stats.loss:.3f})", verdict(ok), {"pruned_nonzero": bad, "kept_changed": moved / kept, "steps": steps})


ZERO_MODES = {"fp32": ("none", False), "bf16": ("bf16", False), "channels_last": ("none", True),
              "bf16 + channels_last": ("bf16", True), "fp16 + GradScaler": ("fp16", False)}  # fp16: slow on a CPU


def check_zeros(ctx: Ctx) -> list[Row]:
    p, rows = ctx.plan, []
    n = p.zero_batch * p.zero_steps
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *p.corr_shape), dtype=torch.uint8, generator=g)
    loader = DeviceLoader(images, torch.randint(0, 10, (n,), generator=g), batch_size=p.zero_batch, device=ctx.device,
                          mean=Cifar10.mean, std=Cifar10.std, train=True, padding=2, flip=True)
    for mode, (amp, cl) in ZERO_MODES.items():
        run_item(rows, "correctness", f"pruned weights stay zero: {mode} ({p.corr_model}, {ctx.device.type})", ctx,
                 lambda a=amp, c=cl: zero_check(Trainer(p.corr_model, p.corr_options, p.corr_shape, ctx.device,
                                                        amp=a, channels_last=c), loader, p.zero_steps))
    return rows


def structured_check(name: str, options: dict, shape: tuple[int, ...], structure: str, device: torch.device) -> Result:
    """Half of the structures removed (random scores): the compact model's outputs on the device against the
    masked model's (float32, TF32 off); pass below a relative error of 1e-5."""
    model = build_model(name, options, shape, device).eval()
    structures = find_structures(model, structure, shape)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in params.items() if p.dim() > 1}
    keep, record = structures.select(structures.structure_scores(scores), 0.5)
    with torch.no_grad():
        for n, m in structures.masks(keep, params).items():
            params[n].mul_(m.to(device))
    compact = structures.compact(model, keep).eval()
    x = torch.randn(8, *shape, generator=g).to(device)
    with torch.no_grad(), strict_fp32():
        masked, small = model(x), compact(x)
    err = float((small - masked).norm() / masked.norm())
    n_dense, n_compact = (sum(p.numel() for p in m.parameters()) for m in (model, compact))
    return (f"rel. error {err:.1e}, {record['structures_kept']:,} of {record['structures_total']:,} structures, "
            f"{n_compact:,} of {n_dense:,} parameters", verdict(err < 1e-5),
            {"rel_error": err, "params_dense": n_dense, "params_compact": n_compact})


STRUCTURED_VIT = {"depth": 2, "dim": 64, "heads": 4}


def check_structured(ctx: Ctx) -> list[Row]:
    p, rows = ctx.plan, []
    vit_shape = (3, 8, 8) if p.quick else (3, 32, 32)
    for name, options, shape, structure in ((p.corr_model, p.corr_options, p.corr_shape, "channel"),
                                            ("vit_small", STRUCTURED_VIT, vit_shape, "head+neuron")):
        run_item(rows, "correctness", f"compact == masked: {name} {structure} ({ctx.device.type})", ctx,
                 lambda a=(name, options, shape, structure): structured_check(*a, ctx.device))
    return rows


def correctness(ctx: Ctx) -> list[Row]:
    """The cheap checks first, so a short budget cuts the costly CPU references last."""
    return check_loader(ctx) + check_routes(ctx) + check_zeros(ctx) + check_structured(ctx) + check_criteria(ctx)


# ------------------------------------------------------------------------------------- training speed
SETTINGS = {  # key: (label, loader, amp, channels_last, compile)
    "a": ("DataLoader + PIL transforms, {w} workers, fp32", "classic", "none", False, False),
    "b": ("device loader, fp32", "device", "none", False, False),
    "c": ("device loader, bf16 + channels_last", "device", "bf16", True, False),
    "d": ("device loader, bf16 + channels_last + torch.compile", "device", "bf16", True, True),
}


@dataclass
class Setting:
    """A measured training setting kept for the epoch: its trainer, loaders and measured rate."""

    key: str
    label: str
    trainer: Trainer
    train: Any
    set_epoch: Callable[[int], None]
    test: Any
    images_per_s: float
    warmup_s: float


def cifar_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images shaped like CIFAR-10 (n, 32, 32, 3) and labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def make_loaders(kind: str, ctx: Ctx, data: dict) -> tuple[Any, Callable[[int], None], Any]:
    """(train loader, its set_epoch, evaluation loader) as a run builds them (no drop_last)."""
    p, (xtr, ytr), (xte, yte) = ctx.plan, data["train"], data["test"]
    if kind == "classic":
        train_tf, eval_tf = cifar_transforms(Cifar10.mean, Cifar10.std, 4, True)
        common = dict(batch_size=p.batch, num_workers=p.workers, pin_memory=ctx.cuda, persistent_workers=p.workers > 0)
        sampler = EpochShuffler(len(ytr), 0)
        train = DataLoader(ArrayDataset(xtr, ytr, train_tf), sampler=sampler, **common)
        return train, sampler.set_epoch, DataLoader(ArrayDataset(xte, yte, eval_tf), shuffle=False, **common)
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    common = dict(batch_size=p.batch, device=ctx.device, mean=Cifar10.mean, std=Cifar10.std)
    train = DeviceLoader(nchw(xtr), torch.from_numpy(ytr), train=True, seed=0, padding=4, flip=True, **common)
    return train, train.set_epoch, DeviceLoader(nchw(xte), torch.from_numpy(yte), train=False, **common)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory(device: torch.device) -> dict[str, float]:
    """Peak allocated / reserved MiB since the last reset, and the device memory outside PyTorch's allocator."""
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    return {"peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20, "total_mib": total / 2**20,
            "outside_torch_mib": (total - free - torch.cuda.memory_reserved(device)) / 2**20}


def mem_text(mem: dict[str, float]) -> str:
    if "peak_allocated_mib" not in mem:
        return ""
    return f", peak {mem['peak_allocated_mib']:,.0f} MiB allocated / {mem['peak_reserved_mib']:,.0f} reserved"


def warm_up(tr: Trainer, it: Iterator, steps: int) -> tuple[float, float]:
    """(seconds of ``steps`` warm-up steps (compilation included), seconds of the last one alone)."""
    tic = time.perf_counter()
    if steps > 1:
        tr.steps(itertools.islice(it, steps - 1), steps - 1)
    last = tr.steps(itertools.islice(it, 1), 1).seconds
    return time.perf_counter() - tic, last


def measure_setting(key: str, ctx: Ctx, data: dict, rows_left: int) -> tuple[Result, Setting]:
    label, kind, amp, cl, comp = SETTINGS[key]
    p = ctx.plan
    tr = Trainer(p.train_model, p.train_options, (3, 32, 32), ctx.device, amp=amp, channels_last=cl, compile=comp)
    train, set_epoch, test = make_loaders(kind, ctx, data)
    it = cycle(train, set_epoch)
    warm_s, step_s = warm_up(tr, it, p.warmup_steps)
    steps = max(2, min(p.timed_steps, int(max(ctx.left(), 0) / (rows_left + 3) / max(step_s, 1e-6))))
    reset_peak(ctx.device)
    stats = tr.steps(itertools.islice(it, steps), steps)
    mem, bad = memory(ctx.device), tr.pruned_nonzero()
    it.close()
    setting = Setting(key, label.format(w=p.workers), tr, train, set_epoch, test, stats.images_per_s, warm_s)
    value = (f"{stats.images_per_s:,.0f} images/s ({stats.samples:,} images in {steps} steps of {p.batch}; warm-up "
             f"{warm_s:.1f} s){mem_text(mem)}; pruned weights nonzero: {bad}")
    return (value, "measured", {"images_per_s": stats.images_per_s, "steps": steps, "batch": p.batch,
                                "warmup_s": warm_s, "pruned_nonzero": bad, **mem}), setting


def train_row(key: str, rows_left: int, ctx: Ctx, data: dict, rows: list[Row]) -> Optional[Setting]:
    """Measure setting ``key`` into a row of ``rows``; the setting when it was measured."""
    p = ctx.plan
    item = f"train ({key}) {SETTINGS[key][0].format(w=p.workers)}: {p.train_model}, batch {p.batch}, 90% masked"
    got: list[Setting] = []

    def one() -> Result:
        result, setting = measure_setting(key, ctx, data, rows_left)
        got.append(setting)
        return result

    if SETTINGS[key][4] and not ctx.cuda:
        row = Row("training", item, "-", "skipped: on the CPU (torch.compile runs on CUDA only)")
        rows.append(row)
    else:
        row = run_item(rows, "training", item, ctx, one)
    ctx.facts.setdefault("rates", {})[key] = row.numbers.get("images_per_s")
    if key == "d":
        rows.append(compile_zero_row(row, ctx))
    return got[0] if got else None


def training(ctx: Ctx) -> list[Row]:
    p, rows = ctx.plan, []
    data = {"train": cifar_like(p.train_images, 0), "test": cifar_like(p.eval_images, 1)}
    best: Optional[Setting] = None
    for i, key in enumerate(("b", "c", "a", "d")):  # the CPU-bound classic pipeline after the fast ones
        setting = train_row(key, 3 - i, ctx, data, rows)
        if setting is not None and (best is None or setting.images_per_s > best.images_per_s):
            best = setting
        setting = None  # only the fastest stays alive (peak memory is per run)
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
    return rows + epoch_rows(best, ctx)


def compile_zero_row(row: Row, ctx: Ctx) -> Row:
    """The compile row of the correctness checks, from the speed run (d) (its timed steps were masked)."""
    item = f"pruned weights stay zero: bf16 + channels_last + torch.compile ({ctx.plan.train_model}, speed run d)"
    if "pruned_nonzero" not in row.numbers:
        return Row("correctness", item, row.value, row.status if row.status.startswith("skipped") else "FAIL")
    bad = row.numbers["pruned_nonzero"]
    return Row("correctness", item, f"pruned weights nonzero: {bad} after {row.numbers['steps']} timed steps",
               verdict(bad == 0), {"pruned_nonzero": bad})


# ------------------------------------------------------------------------------------------ the epoch
def one_epoch(s: Setting, epoch: int, device: torch.device) -> dict[str, float]:
    s.set_epoch(epoch)
    stats = s.trainer.steps(s.train, len(s.train))
    sync(device)
    tic = time.perf_counter()
    s.trainer.evaluate(s.test)
    sync(device)
    return {"train_s": stats.seconds, "train_images": stats.samples, "train_images_per_s": stats.images_per_s,
            "eval_s": time.perf_counter() - tic, "eval_images": len(s.test.dataset)}


def epoch_value(e: dict[str, float]) -> str:
    return (f"train {e['train_s']:.2f} s ({e['train_images']:,} images, {e['train_images_per_s']:,.0f}/s) + eval "
            f"{e['eval_s']:.2f} s ({e['eval_images']:,} images)")


def epoch_rows(best: Optional[Setting], ctx: Ctx) -> list[Row]:
    p, rows = ctx.plan, []
    what = f"{p.train_images:,}-image epoch + {p.eval_images:,}-image evaluation"
    if best is None:
        return [Row("epoch", f"full {what}", "-", "skipped: no training setting was measured")]
    need = (p.train_images + p.eval_images) / best.images_per_s
    compiled = " and compiling the new shapes" if SETTINGS[best.key][4] else ""
    item = f"first full {what}, ({best.key}) {best.label} (includes one-time set-up{compiled})"
    if need > ctx.left():
        why = f"about {need:.0f} s at the measured {best.images_per_s:,.0f} images/s, {max(ctx.left(), 0):.0f} s left"
        return [Row("epoch", item, "-", f"skipped: time budget ({why})")]
    def first_epoch() -> Result:
        e = one_epoch(best, 1, ctx.device)
        return epoch_value(e), "measured", e

    first = run_item(rows, "epoch", item, ctx, first_epoch)
    ctx.facts.update(best=best.key, best_label=best.label, warmup_s=best.warmup_s, best_rate=best.images_per_s)
    ctx.facts["first_epoch"] = first.numbers if first.status == "measured" else None
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()
    reset_peak(ctx.device)

    def steady() -> Result:
        e = one_epoch(best, 2, ctx.device)
        e.update(memory(ctx.device))
        return epoch_value(e) + mem_text(e), "measured", e

    second = run_item(rows, "epoch", f"second full {what}, ({best.key}) {best.label} (steady state)", ctx, steady)
    ctx.facts["epoch"] = second.numbers if second.status == "measured" else ctx.facts["first_epoch"]
    row = run_item(rows, "epoch", "per-epoch checkpoint write as engine/run.py does it (model, optimizer, masks, "
                   "best model)", ctx, lambda: checkpoint_write(best.trainer))
    ctx.facts["checkpoint_s"] = row.numbers.get("checkpoint_s", 0.0)
    return rows


def checkpoint_write(tr: Trainer) -> Result:
    """Seconds of one ``engine.checkpoint.save_checkpoint`` of this run's state (into a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        sync(tr.device)
        tic = time.perf_counter()
        state = tr.model.state_dict()
        save_checkpoint(Path(tmp) / "checkpoint.pt", {
            "model": state, "masks": {n: (m != 0).cpu() for n, m in tr.masks.items()},
            "optimizer": tr.opt.state_dict(), "state": {"best_model": {k: v.detach().cpu() for k, v in state.items()}},
        }, experiment="pbt", run_hash="gpu_check")
        secs = time.perf_counter() - tic
        size = (Path(tmp) / "checkpoint.pt").stat().st_size / 2**20
    return f"{secs:.2f} s ({size:,.0f} MiB)", "measured", {"checkpoint_s": secs, "checkpoint_mib": size}


# ------------------------------------------------------------------------------------- scoring speed
def naive_autosparse(crit: Any, model: nn.Module, names: list[str], data: list) -> dict[str, torch.Tensor]:
    """The mean gradient by the naive per-batch loop, then the criterion's own predictor."""
    params = dict(model.named_parameters())
    with preserved_state(model):
        for prm in model.parameters():
            prm.requires_grad_(True)
        s, _ = naive_grads(model, names, data, square=False)
    return {n: predict_tensor(crit.net, crit.settings, params[n].detach(), s[n] / len(data)) for n in names}


def naive_loop(name: str, crit: Any, model: nn.Module, names: list[str], data: list, p: Plan,
               rounds: int) -> Optional[Callable[[], dict]]:
    if name in NAIVE:
        return lambda: reference_scores(name, model, names, data, p.score_probes, rounds, p.score_shape)
    if name == "autosparse":
        return lambda: naive_autosparse(crit, model, names, data)
    return None  # data-free: no per-batch loop


def agreement_text(name: str, ours: dict, ref: dict) -> tuple[str, Optional[float]]:
    if name in HUTCHINSON:
        return "other probes than the loop: values not compared", None
    if name == "synflow":
        a = mask_agreement(ours, ref)
        return f"kept-mask agreement with the loop {a:.4f}", a
    d = deviation(on_cpu(ours), on_cpu(ref))
    return f"max dev vs the loop {d:.1e}", d


class Scorer:
    """Times ``name``'s criterion and its naive loop on ``data`` with ``rounds`` (SynFlow) on the device."""

    def __init__(self, name: str, ctx: Ctx, model: nn.Module, names: list[str], data: list, rounds: int) -> None:
        opts = criterion_options(name, ctx.plan.score_probes, rounds, ctx.predictor)
        self.crit = compressors.build(name, **opts)
        self.name, self.ctx, self.model, self.data = name, ctx, model, data
        self.loop = naive_loop(name, self.crit, model, names, data, ctx.plan, rounds)

    def ours(self) -> tuple[dict, float, float]:
        return measure(lambda: self.crit.score(self.model, self.data, LOSS, sparsity=SPARSITY), self.ctx.device)

    def naive(self) -> tuple[Optional[dict], float, float]:
        return measure(self.loop, self.ctx.device) if self.loop else (None, 0.0, 0.0)


PILOT = 2  # samples (SynFlow: rounds) of the pilot that decides whether a scoring row still fits the budget


def pilot_estimate(name: str, ctx: Ctx, model: nn.Module, names: list[str], data: list) -> tuple[float, float]:
    """Decision-only estimates (never reported as measurements) of (ours, loop) seconds: both timed on a
    small pilot (2 samples; SynFlow: 2 rounds), the faster of two tries (the first pays lazy set-up), scaled
    linearly (an over-estimate for batched passes)."""
    if name == "synflow":
        pilot, scale = Scorer(name, ctx, model, names, data, PILOT), ctx.plan.score_rounds / PILOT
    else:
        pilot, scale = Scorer(name, ctx, model, names, data[:PILOT], ctx.plan.score_rounds), len(data) / PILOT
    tries = [(pilot.ours()[1], pilot.naive()[1]) for _ in range(2)]
    return min(t for t, _ in tries) * scale, min(t for _, t in tries) * scale


def time_criterion(name: str, ctx: Ctx, model: nn.Module, names: list[str], data: list) -> Result:
    est_ours, est_loop = pilot_estimate(name, ctx, model, names, data)
    if est_ours > ctx.left():
        return "-", f"skipped: time budget (about {est_ours:.0f} s by a pilot, {ctx.left():.0f} s left)", {}
    run = Scorer(name, ctx, model, names, data, ctx.plan.score_rounds)
    ours, t_ours, m_ours = run.ours()
    nums: dict[str, Any] = {"ours_s": t_ours, "ours_mib": m_ours, "samples": len(data)}
    if run.loop is None:
        return f"ours {t_ours:.2f} s (data-free: no per-batch loop)", "measured", nums
    if est_loop > ctx.left():
        return (f"ours {t_ours:.2f} s; the loop skipped: time budget (about {est_loop:.0f} s by a pilot, "
                f"{ctx.left():.0f} s left)", "measured", nums)
    ref, t_ref, m_ref = run.naive()
    text, agree = agreement_text(name, ours, ref)
    nums.update(loop_s=t_ref, loop_mib=m_ref, speedup=t_ref / t_ours, agreement=agree)
    return f"ours {t_ours:.2f} s, loop {t_ref:.2f} s: x{t_ref / t_ours:.1f}; {text}", "measured", nums


def scoring(ctx: Ctx) -> list[Row]:
    p, rows = ctx.plan, []
    model = build_model(p.score_model, p.score_options, p.score_shape, ctx.device)
    names = compressors.prunable_names(model)
    data = split(*make_data(p.score_samples, 10, p.score_shape, ctx.device), 1)
    compressors.build("snip").score(model, data[:2], LOSS)  # warm-up, not timed (lazy kernel/allocator set-up)
    reference_scores("grad_norm", model, names, data[:2], 1, 1, p.score_shape)
    for name in pruning_criteria():
        run_item(rows, "scoring", f"{name}: {p.score_model}, {p.score_samples} mask samples, batch 1, ours vs naive "
                 "loop", ctx, lambda n=name: time_criterion(n, ctx, model, names, data))
    return rows


# ----------------------------------------------------------------------------------------- projection
def run_seconds(ctx: Ctx, rows: list[Row]) -> tuple[float, dict[str, float]]:
    """Seconds of one paper run from this run's measurements: epochs x (epoch + evaluation + checkpoint
    write), the one-time warm-up (compilation) and first-epoch extra, and the mean scoring time over the
    measured criteria."""
    f, p = ctx.facts, ctx.plan
    e, first = f["epoch"], f.get("first_epoch") or f["epoch"]
    steady = e["train_s"] + e["eval_s"]
    per_epoch = steady + f.get("checkpoint_s", 0.0)
    extra = f.get("warmup_s", 0.0) + max(first["train_s"] + first["eval_s"] - steady, 0.0)
    scored = [r.numbers["ours_s"] for r in rows if r.section == "scoring" and "ours_s" in r.numbers]
    mean_score = sum(scored) / len(scored) if scored else 0.0
    parts = {"epoch_s": per_epoch, "one_time_s": extra, "scoring_s": mean_score, "scored_criteria": len(scored)}
    return p.epochs * per_epoch + extra + mean_score, parts


def met(ok: bool, quick: bool = False) -> str:
    return "not judged (--quick: tiny model and data)" if quick else "met" if ok else "not met"

def speedup_row(ctx: Ctx) -> list[Row]:
    """The fastest measured setting's images/s against (a), both measured in this run."""
    f = ctx.facts
    rate_a = f.get("rates", {}).get("a")
    if not rate_a or not f.get("best_rate"):
        return []
    ratio = f["best_rate"] / rate_a
    return [Row("projection", f"fastest setting ({f['best']}) vs (a), the official code's pipeline (measured ratio)",
                f"x{ratio:.2f} images/s (goal >= {GOAL_SPEEDUP:g}x: {met(ratio >= GOAL_SPEEDUP, ctx.plan.quick)})",
                "measured", {"speedup": ratio})]


def projection(ctx: Ctx, rows: list[Row]) -> list[Row]:
    p = ctx.plan
    if not ctx.facts.get("epoch"):
        return speedup_row(ctx) + [Row("projection", "paper table GPU-hours", "-",
                                       "skipped: no full epoch was measured")]
    secs, parts = run_seconds(ctx, rows)
    hours = p.runs * secs / 3600
    goal_epoch = (GOAL_HOURS * 3600 / p.runs - parts["one_time_s"] - parts["scoring_s"]) / p.epochs  # to meet it
    item = (f"paper table: {p.runs} runs x {p.epochs} epochs, one run at a time (projection from this run's measured "
            f"{p.train_images:,}-image {p.train_model} epoch)")
    value = (f"{hours:,.1f} {'GPU' if ctx.cuda else 'CPU'}-hours = {p.runs} x ({p.epochs} x {parts['epoch_s']:.2f} s "
             f"epoch + eval + checkpoint "
             f"+ {parts['one_time_s']:.1f} s warm-up + {parts['scoring_s']:.1f} s scoring); goal <= {GOAL_HOURS:g} h "
             f"(needs <= {goal_epoch:.2f} s per epoch): {met(hours <= GOAL_HOURS, p.quick)}")
    row = Row("projection", item, value, "projection", {"gpu_hours": hours, "run_s": secs, "goal_epoch_s": goal_epoch,
                                                        **parts})
    return speedup_row(ctx) + [row, fit_row(ctx)]


def fit_row(ctx: Ctx) -> Row:
    item = "runs fitting in GPU memory at once (projection from one run's peak)"
    e = ctx.facts.get("epoch") or {}
    if "peak_reserved_mib" not in e:
        return Row("projection", item, "-", "skipped: no GPU memory measured (CPU)")
    one = e["peak_reserved_mib"] + e["outside_torch_mib"]
    k = int(e["total_mib"] // one)
    return Row("projection", item, f"{k} (one run: {e['peak_reserved_mib']:,.0f} MiB reserved + "
               f"{e['outside_torch_mib']:,.0f} MiB outside PyTorch, of {e['total_mib']:,.0f} MiB); total images/s "
               "with several at once not measured", "projection", {"runs": k, "one_run_mib": one})


# ------------------------------------------------------------------------------------------- reporting
def finite(obj: Any) -> Any:
    """JSON-safe numbers: NaN / inf become None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, meta: dict, sections: dict, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(finite({"meta": meta, "sections": sections, "rows": [asdict(r) for r in rows]}),
                              indent=1, default=str))
    os.replace(tmp, path)


def table(rows: list[Row]) -> str:
    ordered = sorted(rows, key=lambda r: SECTIONS.index(r.section))
    return fmt(["section", "check / measurement", "result", "status"],
               [[r.section, r.item, r.value, r.status] for r in ordered])


def describe(ctx: Ctx, args: argparse.Namespace) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "device": str(ctx.device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "threads": torch.get_num_threads(), "quick": args.quick,
        "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "plan": asdict(ctx.plan),
        "tolerance": ctx.tol, "tf32_in_speed_rows": {"cudnn": torch.backends.cudnn.allow_tf32,
                                                     "matmul": torch.backends.cuda.matmul.allow_tf32}}
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        meta.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_mib=props.total_memory / 2**20,
                    cudnn=torch.backends.cudnn.version())
    return meta


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and data, few steps: seconds on a CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda[:i] or cpu")
    ap.add_argument("--out", default="results/gpu_check.json", help="JSON file of every row and its numbers")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for all sections after start-up (default 400; quick 90)")
    ap.add_argument("--tol", type=float, default=1e-3, help="relative score tolerance of the correctness rows")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch size (default 512; quick 32)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of setting (a) (default 2)")
    ap.add_argument("--sections", default="correctness,training,scoring",
                    help="comma-separated subset of correctness, training (with the epoch), scoring")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    plan = QUICK if args.quick else Plan()
    plan = replace(plan, budget=args.budget or plan.budget, batch=args.batch_size or plan.batch, workers=args.workers)
    run = {"correctness": correctness, "training": training, "scoring": scoring}
    wanted = [s for s in run if s in args.sections.split(",")]
    out, start, share, rows, sections = Path(args.out), time.perf_counter(), 0.0, [], {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Ctx(plan, torch.device(args.device), write_predictor(Path(tmp)), args.tol)
        meta = describe(ctx, args)
        print(f"gpu_check on {meta.get('gpu', ctx.device)} (torch {torch.__version__}), budget {plan.budget:.0f} s",
              flush=True)
        for name in wanted:
            share += SHARES[name] / sum(SHARES[w] for w in wanted)
            ctx.deadline = start + share * plan.budget
            tic = time.perf_counter()
            run_section(name, run[name], ctx, rows)
            sections[name] = {"seconds": time.perf_counter() - tic, "deadline_s": ctx.deadline - start}
            write_json(out, meta, sections, rows)
    rows += projection(ctx, rows)
    meta["seconds"] = time.perf_counter() - start
    write_json(out, meta, sections, rows)
    print(f"\ngpu_check: {meta['seconds']:.0f} s on {meta.get('gpu', ctx.device)}; rows in {out}\n")
    print(table(rows))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


def run_section(name: str, fn: Callable[[Ctx], list[Row]], ctx: Ctx, rows: list[Row]) -> None:
    print(f"\n[{name}] (until {ctx.left():.0f} s from now)", flush=True)
    try:
        rows += fn(ctx)
    except Exception as exc:  # noqa: BLE001 - a broken section is a row, the others still run
        rows.append(Row(name if name in SECTIONS else "training", f"{name} section", f"{type(exc).__name__}: {exc}",
                        "FAIL" if name == "correctness" else "error"))
        print(f"  [{name}] aborted: {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
