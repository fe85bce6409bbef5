"""GPU speed check: the paper runs' training and scoring speed on one device, with ratios against references
measured in the same run, and what they project for the paper table.

    python benchmarks/gpu_check.py --out results/gpu_check.json            # one H100/H200: about 5 minutes
    python benchmarks/gpu_check.py --quick --device cpu --out /tmp/q.json  # tiny model and data: seconds

This script only measures.  Correctness on the device (criteria scores against the CPU, estimator routes, the
device loader, pruned weights under AMP / channels_last / torch.compile, structured models) is tested by
``python -m pytest -m gpu`` (tests/test_gpu.py).

Sections, in the order they run; each may run until its share of ``--budget`` seconds is used (time a section
leaves passes on to the next); an item that does not fit is listed as skipped, never estimated:

1. **training** speed of the 90%-masked model through ``engine.loop.train_epoch`` on CIFAR-shaped random
   uint8 data (ResNet18, batch 512, 50,000 + 10,000 images): (a) DataLoader with PIL torchvision transforms on
   2 workers, fp32 (the official code's pipeline, the reference of the ratio column), (b) device loader, fp32,
   (c) + bf16 + channels_last, (d) + torch.compile (CUDA only); then **epoch**: a full training epoch plus the
   evaluation (``engine.loop.evaluate``) with the fastest setting, twice (the first compiles any new shapes),
   the per-epoch checkpoint write and the peak GPU memory of that run;
2. **scoring** speed: every criterion on ResNet18 with 100 mask samples at batch 1 (multi-round criteria at the
   plan's rounds), each row naming its reference (:func:`reference`): the naive per-batch loop of
   ``benchmarks/scoring.py`` on the same device where one is written (:data:`LOOPS`; the ratio column: loop
   time / ours), none for data-free criteria and for those without a loop (their time only);
3. **projection** (labelled as such): GPU-hours of the paper table (195 runs x 160 epochs) from the measured
   epoch + evaluation time, warm-up and mean scoring time; how many runs fit in GPU memory at once.

The rows are printed as they come and as one table at the end; all rows with their numbers are written as JSON
to ``--out`` after every section, so a run cut short keeps what it measured.  Exit code 1 when a measurement
raised an error.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import compressors  # noqa: E402
import models  # noqa: E402
from autosparse.predictor import predict_tensor  # noqa: E402
from benchmarks.scoring import (  # noqa: E402
    HUTCHINSON,
    LOSS,
    NAIVE,
    criterion_options,
    deviation,
    fmt,
    has_option,
    make_data,
    measure,
    naive_grads,
    reference_scores,
    split,
    write_predictor,
)
from benchmarks.training import cycle, random_masks  # noqa: E402
from compressors.base import preserved_state  # noqa: E402
from data.arrays import ArrayDataset  # noqa: E402
from data.datasets.cifar import Cifar10, cifar_transforms  # noqa: E402
from data.device_loader import DeviceLoader  # noqa: E402
from data.loaders import EpochShuffler  # noqa: E402
from engine.checkpoint import save_checkpoint  # noqa: E402
from engine.loop import EpochStats, MaskEnforcer, evaluate, make_scaler, prepare_model, train_epoch  # noqa: E402

SECTIONS = ("training", "epoch", "scoring", "projection")  # table order
SHARES = {"training": 0.55, "scoring": 0.45}  # of --budget; the epoch is in "training"
ORDER = ["magnitude", "random", "grad_norm", "snip", "grasp", "fisher_diag", "fisher_pruner", "fts", "autosparse",
         "synflow", "hutch_diag", "hutch_pruning", "hts"]  # cheap first: the costly loops are cut first
SPARSITY = 0.9
GOAL_HOURS, GOAL_SPEEDUP = 24.0, 5.0
Result = tuple[str, str, dict[str, Any]]  # (value, status, numbers)


# ------------------------------------------------------------------------------------------ plan, rows
@dataclass(frozen=True)
class Plan:
    """The sizes of every section: the issue's by default, tiny ones for ``--quick``."""

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
    budget: float = 300.0
    runs: int = 195
    epochs: int = 160
    quick: bool = False


TINY = {"width": 8}
QUICK = Plan(train_model="small_cnn", train_options=TINY, batch=32, train_images=256, eval_images=64, warmup_steps=2,
             timed_steps=3, score_model="small_cnn", score_options=TINY, score_shape=(3, 8, 8), score_samples=10,
             score_probes=2, score_rounds=3, budget=90.0, quick=True)


@dataclass
class Row:
    """One line of the table: what was measured, its result, its ratio to the reference and its numbers."""

    section: str
    item: str
    value: str
    status: str  # measured | projection | error | skipped: <why>
    numbers: dict[str, Any] = field(default_factory=dict)
    ratio: str = ""  # against the reference measured in this run: (a) for training, the naive loop for scoring


@dataclass
class Ctx:
    """What every section gets: the plan, the device, its deadline and the facts earlier sections found."""

    plan: Plan
    device: torch.device
    predictor: Path
    deadline: float = math.inf
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def run_item(rows: list[Row], section: str, item: str, ctx: Ctx, fn: Callable[[], Result]) -> Row:
    """Append the row of ``fn()`` (skipped past the deadline; an exception becomes an error row)."""
    tic = time.perf_counter()
    if ctx.left() <= 0:
        row = Row(section, item, "-", "skipped: time budget")
    else:
        try:
            row = Row(section, item, *fn())
        except Exception as exc:  # noqa: BLE001 - one broken item must not lose the whole run
            msg = (str(exc).strip().splitlines() or [""])[0][:200]
            row = Row(section, item, f"{type(exc).__name__}: {msg}", "error")
    row.numbers["item_s"] = time.perf_counter() - tic
    rows.append(row)
    print(f"  [{section}] {row.item}: {row.value} ({row.status}, {row.numbers['item_s']:.1f} s)", flush=True)
    return row


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free_memory(device: torch.device) -> None:
    """Collect what earlier items left and start a new peak-memory count."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reset_peak(device)


def build_model(name: str, options: dict, shape: tuple[int, ...], device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return models.build(name, num_classes=10, input_shape=shape, **options).to(device)


# ------------------------------------------------------------------------------------- training speed
class Trainer:
    """A 90%-masked model with SGD (lr 0.03, momentum 0.9, weight decay 5e-4, as the paper) trained through
    ``engine.loop.train_epoch`` with the given precision, memory format and compilation."""

    def __init__(self, name: str, options: dict, device: torch.device, *, amp: str = "none",
                 channels_last: bool = False, compile: bool = False) -> None:
        self.model = build_model(name, options, (3, 32, 32), device)
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


SETTINGS = {  # key: (label, loader, amp, channels_last, compile)
    "a": ("DataLoader + PIL transforms, {w} workers, fp32", "classic", "none", False, False),
    "b": ("device loader, fp32", "device", "none", False, False),
    "c": ("device loader, bf16 + channels_last", "device", "bf16", True, False),
    "d": ("device loader, bf16 + channels_last + torch.compile", "device", "bf16", True, True),
}
REFERENCE = "a"  # the training rows' ratios are images/s against this setting's


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
    """Warm-up steps, then as many timed steps as the budget left allows (at most ``timed_steps``)."""
    label, kind, amp, cl, comp = SETTINGS[key]
    p = ctx.plan
    tr = Trainer(p.train_model, p.train_options, ctx.device, amp=amp, channels_last=cl, compile=comp)
    train, set_epoch, test = make_loaders(kind, ctx, data)
    it = cycle(train, set_epoch)
    warm_s, step_s = warm_up(tr, it, p.warmup_steps)
    steps = max(2, min(p.timed_steps, int(max(ctx.left(), 0) / (rows_left + 3) / max(step_s, 1e-6))))
    reset_peak(ctx.device)
    stats = tr.steps(itertools.islice(it, steps), steps)
    mem = memory(ctx.device)
    it.close()
    setting = Setting(key, label.format(w=p.workers), tr, train, set_epoch, test, stats.images_per_s, warm_s)
    value = (f"{stats.images_per_s:,.0f} images/s ({stats.samples:,} images in {steps} steps of {p.batch}; warm-up "
             f"{warm_s:.1f} s){mem_text(mem)}")
    return (value, "measured", {"setting": key, "images_per_s": stats.images_per_s, "steps": steps,
                                "batch": p.batch, "warmup_s": warm_s, **mem}), setting


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
        rows.append(Row("training", item, "-", "skipped: on the CPU (torch.compile runs on CUDA only)"))
    else:
        run_item(rows, "training", item, ctx, one)
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
        free_memory(ctx.device)
    rates = ctx.facts["rates"] = {r.numbers["setting"]: r.numbers["images_per_s"] for r in rows
                                  if "images_per_s" in r.numbers}
    for r in rows:  # the ratios once the reference (measured third) is known
        if "images_per_s" in r.numbers and rates.get(REFERENCE):
            r.numbers["ratio"] = r.numbers["images_per_s"] / rates[REFERENCE]
            r.ratio = f"x{r.numbers['ratio']:.2f} vs ({REFERENCE})"
    return rows + epoch_rows(best, ctx)


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
    """The fastest setting's first and second full epoch + evaluation, and its per-epoch checkpoint write."""
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

    def epoch(number: int, with_memory: bool) -> Result:
        e = one_epoch(best, number, ctx.device)
        if with_memory:
            e.update(memory(ctx.device))
        return epoch_value(e) + mem_text(e), "measured", e

    first = run_item(rows, "epoch", item, ctx, lambda: epoch(1, False))
    ctx.facts.update(best=best.key, best_label=best.label, warmup_s=best.warmup_s, best_rate=best.images_per_s)
    ctx.facts["first_epoch"] = first.numbers if first.status == "measured" else None
    free_memory(ctx.device)
    second = run_item(rows, "epoch", f"second full {what}, ({best.key}) {best.label} (steady state)", ctx,
                      lambda: epoch(2, True))
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
def pruning_criteria() -> list[str]:
    """Every registered criterion that prunes (:func:`compressors.pruning_criteria`), cheap ones first."""
    rank = {n: i for i, n in enumerate(ORDER)}
    return sorted(compressors.pruning_criteria(), key=lambda n: (rank.get(n, len(ORDER)), n))


def on_cpu(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().float().cpu() for n, t in scores.items()}


def mask_agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Fraction of entries on which the global top-(1 - SPARSITY) masks of ``a`` and ``b`` agree."""
    ma, mb = compressors.select(on_cpu(a), SPARSITY), compressors.select(on_cpu(b), SPARSITY)
    return sum(int((ma[n] == mb[n]).sum()) for n in mb) / max(sum(mb[n].numel() for n in mb), 1)


def naive_autosparse(crit: Any, model: nn.Module, names: list[str], data: list) -> dict[str, torch.Tensor]:
    """The mean gradient by the naive per-batch loop, then the criterion's own predictor."""
    params = dict(model.named_parameters())
    with preserved_state(model):
        for prm in model.parameters():
            prm.requires_grad_(True)
        s, _ = naive_grads(model, names, data, square=False)
    return {n: predict_tensor(crit.net, crit.settings, params[n].detach(), s[n] / len(data)) for n in names}


LoopBuilder = Callable[[str, Any, nn.Module, list, list, Plan, int], Callable[[], dict]]


def _scoring_loop(name: str, crit: Any, model: nn.Module, names: list[str], data: list, p: Plan,
                  rounds: int) -> Callable[[], dict]:
    return lambda: reference_scores(name, model, names, data, p.score_probes, rounds, p.score_shape)


def _autosparse_loop(name: str, crit: Any, model: nn.Module, names: list[str], data: list, p: Plan,
                     rounds: int) -> Callable[[], dict]:
    return lambda: naive_autosparse(crit, model, names, data)


# criterion -> (its reference, the builder of that reference's loop); a criterion not here has no reference
LOOPS: dict[str, tuple[str, LoopBuilder]] = {
    **{n: ("the naive per-batch loop of benchmarks/scoring.py", _scoring_loop) for n in NAIVE},
    "autosparse": ("the naive per-batch mean-gradient loop, then the criterion's predictor", _autosparse_loop),
}


def reference(name: str) -> str:
    """What the scoring row of criterion ``name`` is compared with: its loop in :data:`LOOPS`, else none
    (data-free, or no naive loop written for it)."""
    if name in LOOPS:
        return LOOPS[name][0]
    return "none: data-free" if not compressors.get(name).needs_data else "none: no naive loop written for it"


def naive_loop(name: str, crit: Any, model: nn.Module, names: list[str], data: list, p: Plan,
               rounds: int) -> Optional[Callable[[], dict]]:
    """The reference loop of ``name`` on ``data`` (:data:`LOOPS`), or None."""
    return LOOPS[name][1](name, crit, model, names, data, p, rounds) if name in LOOPS else None


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
    small pilot (2 samples; a multi-round criterion: 2 rounds), the faster of two tries (the first pays lazy
    set-up), scaled linearly (an over-estimate for batched passes)."""
    if has_option(name, "rounds"):
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
    nums: dict[str, Any] = {"ours_s": t_ours, "ours_mib": m_ours, "samples": len(data), "reference": reference(name)}
    if run.loop is None:
        return f"ours {t_ours:.2f} s; reference: {reference(name)}", "measured", nums
    if est_loop > ctx.left():
        return (f"ours {t_ours:.2f} s; reference ({reference(name)}) skipped: time budget (about {est_loop:.0f} s "
                f"by a pilot, {ctx.left():.0f} s left)", "measured", nums)
    ref, t_ref, m_ref = run.naive()
    text, agree = agreement_text(name, ours, ref)
    nums.update(loop_s=t_ref, loop_mib=m_ref, speedup=t_ref / t_ours, agreement=agree)
    return f"ours {t_ours:.2f} s, loop {t_ref:.2f} s ({reference(name)}); {text}", "measured", nums


def scoring(ctx: Ctx) -> list[Row]:
    p, rows = ctx.plan, []
    model = build_model(p.score_model, p.score_options, p.score_shape, ctx.device)
    names = compressors.prunable_names(model)
    data = split(*make_data(p.score_samples, 10, p.score_shape, ctx.device), 1)
    compressors.build("snip").score(model, data[:2], LOSS)  # warm-up, not timed (lazy kernel/allocator set-up)
    reference_scores("grad_norm", model, names, data[:2], 1, 1, p.score_shape)
    for name in pruning_criteria():
        row = run_item(rows, "scoring", f"{name}: {p.score_model}, {p.score_samples} mask samples, batch 1", ctx,
                       lambda n=name: time_criterion(n, ctx, model, names, data))
        if "speedup" in row.numbers:
            row.ratio = f"x{row.numbers['speedup']:.1f} vs the loop"
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
    """The fastest measured setting's images/s against the reference (a), both measured in this run."""
    f = ctx.facts
    rate_ref = f.get("rates", {}).get(REFERENCE)
    if not rate_ref or not f.get("best_rate"):
        return []
    ratio = f["best_rate"] / rate_ref
    return [Row("projection", f"fastest setting ({f['best']}) vs ({REFERENCE}), the official code's pipeline "
                "(measured ratio)", f"goal >= {GOAL_SPEEDUP:g}x: {met(ratio >= GOAL_SPEEDUP, ctx.plan.quick)}",
                "measured", {"speedup": ratio}, f"x{ratio:.2f} images/s")]


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
    return fmt(["section", "measurement", "result", "ratio", "status"],
               [[r.section, r.item, r.value, r.ratio, r.status] for r in ordered])


def describe(ctx: Ctx, args: argparse.Namespace) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "device": str(ctx.device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "threads": torch.get_num_threads(), "quick": args.quick,
        "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "plan": asdict(ctx.plan),
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}}
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
                    help="seconds for all sections after start-up (default 300; quick 90)")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch size (default 512; quick 32)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of setting (a) (default 2)")
    ap.add_argument("--sections", default="training,scoring",
                    help="comma-separated subset of training (with the epoch) and scoring")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.sections.split(",")) - set(SHARES))
    if unknown:
        ap.error(f"--sections: unknown {unknown}; known: {', '.join(SHARES)} (correctness: python -m pytest -m gpu)")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    plan = QUICK if args.quick else Plan()
    plan = replace(plan, budget=args.budget or plan.budget, batch=args.batch_size or plan.batch, workers=args.workers)
    run = {"training": training, "scoring": scoring}
    wanted = [s for s in run if s in args.sections.split(",")]
    out, start, share, rows, sections = Path(args.out), time.perf_counter(), 0.0, [], {}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Ctx(plan, torch.device(args.device), write_predictor(Path(tmp)))
        meta = describe(ctx, args)
        print(f"gpu_check on {meta.get('gpu', ctx.device)} (torch {torch.__version__}), budget {plan.budget:.0f} s; "
              "correctness: python -m pytest -m gpu", flush=True)
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
    return 1 if any(r.status == "error" for r in rows) else 0


def run_section(name: str, fn: Callable[[Ctx], list[Row]], ctx: Ctx, rows: list[Row]) -> None:
    print(f"\n[{name}] (until {ctx.left():.0f} s from now)", flush=True)
    try:
        rows += fn(ctx)
    except Exception as exc:  # noqa: BLE001 - a broken section is a row, the others still run
        rows.append(Row(name, f"{name} section", f"{type(exc).__name__}: {exc}", "error"))
        print(f"  [{name}] aborted: {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
