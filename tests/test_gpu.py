"""Correctness on a CUDA device: what the framework computes on the GPU is what it computes on the CPU.

    python -m pytest -m gpu        # on a machine with CUDA: every test below marked ``gpu``

A plain ``python -m pytest`` deselects the ``gpu`` tests (``addopts`` in pyproject.toml); without CUDA they
skip.  On ``cuda``, in float32 with TF32 off, they check that

- every registered pruning criterion scores a ResNet18 like the CPU does on a copy of the same model and mask
  data: ``max |cuda - cpu| / max |cpu| <= 1e-3`` and the kept masks at 90% sparsity agree on >= 99% of the
  entries (SynFlow by the masks alone: its thresholds compound over its rounds).  CUDA's generator draws
  other Hutchinson probes than the CPU's for the same seed, so the Hutchinson criteria are held against a CPU
  reference (one Hessian-vector product per batch and probe) given the very probes the CUDA run drew;
- the estimator routes agree: per-batch gradients by hooks and vmap against the loop, the Hutchinson
  diagonal by batched probes and vmap against the loop;
- the device loader gives, for each image, one of the outputs torchvision's RandomCrop(4) + flip can give
  for its source, with offsets and flips uniform (within 5 sigma), and the CPU loader's batches exactly;
- pruned weights stay exactly zero through masked SGD steps (momentum, weight decay) under fp32, bf16,
  fp16 + GradScaler, channels_last, bf16 + channels_last and bf16 + channels_last + torch.compile, while
  the kept weights train;
- evaluation on CUDA gives the CPU's loss, and under channels_last / bf16 the fp32 one;
- structured pruning: the compact model (structures cut out) computes what the masked model computes.

The unmarked tests at the end run on the CPU in every run: they show that these checks can fail (the
comparison flags other scores, the crop matcher an image torchvision cannot give, the zero count a revived
weight) and that the Hutchinson reference reproduces the criteria when both sides draw their probes on the
CPU.  Speed is measured by ``benchmarks/gpu_check.py``, never asserted here.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms import functional as TF

import compressors
import models
from autosparse.predictor import build_mlp, make_settings, save_predictor
from compressors import Scores, estimators
from compressors.options import estimator_generator
from compressors.structures import find_structures
from data.datasets.cifar import Cifar10
from data.device_loader import DeviceLoader
from engine.loop import EpochStats, MaskEnforcer, evaluate, make_scaler, prepare_model, train_epoch

NO_CUDA = "needs a CUDA device (torch.cuda.is_available() is False): run python -m pytest -m gpu on a GPU machine"
CPU = torch.device("cpu")
LOSS = nn.CrossEntropyLoss()
SHAPE = (3, 32, 32)
SPARSITY = 0.9
TOL = 1e-3  # max |got - ref| / max |ref| allowed between devices (float32; summation orders differ)
PROBES, ROUNDS = 3, 10  # Hutchinson probes per mask batch, SynFlow rounds


def gpu(test: Callable) -> Callable:
    """Mark ``test`` as a GPU test: selected by ``-m gpu``, skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)(test))


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 off for convolutions and matmuls (cuDNN uses it by default), restored afterwards."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AutoSparse predictor with random weights (its scores are compared, never judged)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("autosparse") / "predictor.pt"
    save_predictor(path, build_mlp(2, [16]), make_settings("standardized", [16]), {"note": "test_gpu: random"})
    return path


# ------------------------------------------------------------------------------------------ helpers
def build(name: str = "resnet18", device: torch.device = CPU, shape: tuple[int, ...] = SHAPE,
          **options: Any) -> nn.Module:
    torch.manual_seed(0)
    return models.build(name, num_classes=10, input_shape=shape, **options).to(device)


def mask_batches(n: int = 8, batch: int = 2, shape: tuple[int, ...] = SHAPE) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, *shape, generator=g), torch.arange(n) % 10
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def moved(batches: list, device: torch.device) -> list:
    return [(x.to(device), y.to(device)) for x, y in batches]


def on_cpu(scores: Scores) -> Scores:
    return {n: t.detach().float().cpu() for n, t in scores.items()}


def deviation(got: Scores, ref: Scores) -> float:
    """max |got - ref| / max |ref| over all tensors."""
    got, ref = on_cpu(got), on_cpu(ref)
    num = max(float((got[n].double() - ref[n].double()).abs().max()) for n in ref)
    return num / (max(float(ref[n].abs().max()) for n in ref) or 1.0)


def mask_agreement(got: Scores, ref: Scores) -> float:
    """Fraction of entries on which the global masks keeping the top 10% of ``got`` and ``ref`` agree."""
    a, b = compressors.select(on_cpu(got), SPARSITY), compressors.select(on_cpu(ref), SPARSITY)
    return sum(int((a[n] == b[n]).sum()) for n in b) / sum(b[n].numel() for n in b)


def assert_same_scores(got: Scores, ref: Scores, tol: float = TOL, *, by_masks: bool = False) -> None:
    """``got`` (any device) holds ``ref``'s tensors, all finite, with kept masks at 90% sparsity agreeing on
    >= 99% of the entries and, unless ``by_masks``, within ``tol`` of ``ref`` relative to its largest entry."""
    got, ref = on_cpu(got), on_cpu(ref)
    assert {n: t.shape for n, t in got.items()} == {n: t.shape for n, t in ref.items()}
    bad = [n for n, t in got.items() if not bool(torch.isfinite(t).all())]
    assert not bad, f"non-finite scores in {bad}"
    agree = mask_agreement(got, ref)
    assert agree >= 0.99, f"the kept masks agree on only {agree:.4f} of the entries"
    if not by_masks:
        dev = deviation(got, ref)
        assert dev <= tol, f"max |got - ref| / max |ref| = {dev:.2e} > {tol:g}"


# ------------------------------------------------------------------------------------------- criteria
HUTCHINSON: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    # the score from the weights θ, the mean gradient ḡ and the Hessian-diagonal estimate Ĥ
    "hutch_diag": lambda th, g, h: h,
    "hutch_pruning": lambda th, g, h: 0.5 * th ** 2 * h,
    "hts": lambda th, g, h: (th * g + 0.5 * th ** 2 * h).abs(),
}


def criterion_options(name: str, predictor: Path) -> dict[str, Any]:
    """Options that make two runs comparable: a fixed ``seed`` for every seeded criterion."""
    if name in HUTCHINSON:
        return {"probes": PROBES, "seed": 0}
    if name == "synflow":
        return {"rounds": ROUNDS}
    if name == "autosparse":
        return {"predictor": str(predictor)}
    return {"seed": 0} if "seed" in {f.name for f in dataclasses.fields(compressors.get(name).Options)} else {}


def probed_names(model: nn.Module, names: list[str], probe_params: str) -> list[str]:
    """The tensors the probes run over, in the criterion's order: the scored ones, or every parameter."""
    return list(names) if probe_params == "scored" else list(
        dict.fromkeys([n for n, _ in model.named_parameters()] + list(names)))


def drawn_probes(shapes: list[torch.Size], seed: int, device: torch.device, count: int) -> list[list[torch.Tensor]]:
    """The first ``count`` probes a Hutchinson criterion with ``seed`` draws on ``device`` (its generator,
    :class:`compressors.estimators.RademacherProbes`), one CPU tensor per probed parameter."""
    stream = estimators.RademacherProbes(shapes, estimator_generator(seed, device), device, torch.float32)
    return [[z.clone().cpu() for z in stream.split(stream.draw(1)[0])] for _ in range(count)]


def hutchinson_reference(name: str, model: nn.Module, names: list[str], probed: list[str], batches: list,
                         probes: list[list[torch.Tensor]], temperature: float = 200.0) -> Scores:
    """``name``'s scores of ``names`` from one Hessian-vector product per (batch, probe) with the given probes
    over ``probed`` (for each batch in order, its K probes): Ĥ = mean of z ⊙ H_b z and ḡ = mean of g_b,
    both of the batch-mean loss with the logits divided by ``temperature``."""
    model.eval()
    params = dict(model.named_parameters())
    ps = [params[n] for n in probed]
    hsum, gsum = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
    stream = iter(probes)
    for x, y in batches:
        grads = torch.autograd.grad(LOSS(model(x) / temperature, y), ps, create_graph=True)
        for _ in range(len(probes) // len(batches)):
            z = next(stream)
            hz = torch.autograd.grad(grads, ps, grad_outputs=z, retain_graph=True, allow_unused=True)
            for acc, zi, hi in zip(hsum, z, hz):
                if hi is not None:
                    acc += zi * hi
        for acc, gi in zip(gsum, grads):
            acc += gi.detach()
    at = {n: i for i, n in enumerate(probed)}
    return {n: HUTCHINSON[name](params[n].detach(), gsum[at[n]] / len(batches), hsum[at[n]] / len(probes))
            for n in names}


def hutchinson_case(name: str, probe_params: str, cpu_model: nn.Module, model: nn.Module, batches: list,
                    device: torch.device, probe_seed: int = 0) -> tuple[Scores, Scores]:
    """(``name``'s scores of ``model`` on ``device`` with seed 0, the CPU reference given the probes drawn on
    ``device`` with ``probe_seed``: the criterion's own when 0)."""
    got = compressors.build(name, probes=PROBES, seed=0, probe_params=probe_params).score(
        model, moved(batches, device), LOSS, sparsity=SPARSITY)
    names = compressors.prunable_names(cpu_model)
    probed = probed_names(cpu_model, names, probe_params)
    params = dict(cpu_model.named_parameters())
    probes = drawn_probes([params[n].shape for n in probed], probe_seed, device, len(batches) * PROBES)
    return got, hutchinson_reference(name, cpu_model, names, probed, batches, probes)


@gpu
@pytest.mark.parametrize("name", [n for n in compressors.pruning_criteria() if n not in HUTCHINSON])
def test_criterion_scores_on_cuda_equal_the_cpu_scores(name: str, device: torch.device, predictor: Path) -> None:
    cpu_model = build()
    model = copy.deepcopy(cpu_model).to(device)
    batches = mask_batches()
    opts = criterion_options(name, predictor)
    got = compressors.build(name, **opts).score(model, moved(batches, device), LOSS, sparsity=SPARSITY)
    ref = compressors.build(name, **opts).score(cpu_model, batches, LOSS, sparsity=SPARSITY)
    assert_same_scores(got, ref, by_masks=name == "synflow")


@gpu
@pytest.mark.parametrize("probe_params", ["scored", "all"])
@pytest.mark.parametrize("name", list(HUTCHINSON))
def test_hutchinson_scores_on_cuda_equal_a_cpu_reference_given_the_probes_cuda_drew(
        name: str, probe_params: str, device: torch.device) -> None:
    cpu_model = build()
    got, ref = hutchinson_case(name, probe_params, cpu_model, copy.deepcopy(cpu_model).to(device), mask_batches(),
                               device)
    assert_same_scores(got, ref)


@gpu
@pytest.mark.parametrize("route", ["hooks", "vmap"])
def test_per_batch_gradient_routes_agree_with_the_loop_on_cuda(route: str, device: torch.device) -> None:
    model = build(device=device)
    names, batches = compressors.prunable_names(model), moved(mask_batches(), device)
    ref = estimators.fisher_diagonal(model, names, batches, LOSS, route="loop")
    got = estimators.fisher_diagonal(model, names, batches, LOSS, route=route)
    assert deviation(got.fisher, ref.fisher) <= TOL and deviation(got.mean_grad, ref.mean_grad) <= TOL


@gpu
@pytest.mark.parametrize("route", ["probes", "vmap"])
def test_hutchinson_routes_agree_with_the_loop_on_cuda(route: str, device: torch.device) -> None:
    model = build(device=device)
    names, batches = compressors.prunable_names(model), moved(mask_batches(), device)

    def estimate(r: str) -> estimators.HutchinsonResult:
        gen = torch.Generator(device=device).manual_seed(0)
        return estimators.hutchinson_diagonal(model, names, batches, LOSS, probes=PROBES, generator=gen,
                                              temperature=200.0, route=r)

    ref, got = estimate("loop"), estimate(route)
    assert got.samples == ref.samples == len(batches) * PROBES
    assert deviation(got.diag, ref.diag) <= TOL and deviation(got.mean_grad, ref.mean_grad) <= TOL


# ------------------------------------------------------------------------------------- the device loader
PADDING = 4


def first_match(src: torch.Tensor, out: torch.Tensor, padding: int = PADDING) -> tuple[list, torch.Tensor]:
    """(the keys (top, left, flip) of torchvision's RandomCrop(padding) + RandomHorizontalFlip outputs, for each
    image the index of the first key whose output for ``src[i]`` equals ``out[i]``, -1 if none), for uint8
    batches (N, C, H, W)."""
    h, w = src.shape[-2:]
    padded = TF.pad(src, [padding])  # zero fill, as RandomCrop(padding=p)
    keys, hits = [], []
    for top, left in itertools.product(range(2 * padding + 1), repeat=2):
        crop = TF.crop(padded, top, left, h, w)
        for flip in (False, True):
            keys.append((top, left, flip))
            hits.append(((TF.hflip(crop) if flip else crop) == out).flatten(1).all(1))
    hit = torch.stack(hits)
    return keys, torch.where(hit.any(0), hit.int().argmax(0), torch.full_like(hit[0], -1, dtype=torch.int64))


def uniformity(keys: list, first: torch.Tensor, padding: int = PADDING) -> tuple[float, bool]:
    """(largest |z| of the top-offset, left-offset and flip counts against uniform draws, every value seen)."""
    k = np.array([keys[i] for i in first.tolist() if i >= 0], dtype=np.int64).reshape(-1, 3)
    n, z, seen = len(k), [], True
    for col, m in ((0, 2 * padding + 1), (1, 2 * padding + 1), (2, 2)):
        counts = np.bincount(k[:, col], minlength=m)
        z.append(float(np.max(np.abs(counts - n / m)) / math.sqrt(n / m * (1 - 1 / m))))
        seen &= bool(counts.min() > 0)
    return max(z), seen


def augmented(images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(the order, images and labels of one seeded training epoch of the device loader on ``device``), on the
    CPU; mean 0 and std 1, so ``round(x * 255)`` gives the augmented uint8 images back."""
    c = images.shape[1]
    loader = DeviceLoader(images, labels, batch_size=256, device=device, mean=(0.0,) * c, std=(1.0,) * c,
                          train=True, seed=3, padding=PADDING, flip=True)
    loader.set_epoch(1)
    xs, ys = zip(*loader)
    return loader.order().cpu(), torch.cat(xs).cpu(), torch.cat(ys).cpu()


def random_images(n: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


@gpu
def test_device_loader_on_cuda_gives_torchvision_crops_and_flips_drawn_uniformly(device: torch.device) -> None:
    images, labels = random_images()
    order, x, y = augmented(images, labels, device)
    assert x.shape == images.shape and torch.equal(y, labels[order])
    keys, first = first_match(images[order], torch.round(x * 255).to(torch.uint8))
    assert int((first < 0).sum()) == 0, "images that torchvision's RandomCrop + flip cannot give"
    z, seen = uniformity(keys, first)
    assert z < 5 and seen, (z, seen)


@gpu
def test_device_loader_on_cuda_gives_the_cpu_loaders_batches(device: torch.device) -> None:
    images, labels = random_images(1000)
    for a, b in zip(augmented(images, labels, device), augmented(images, labels, CPU)):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------- masked training
MODES = {  # mode: (amp, channels_last, compile)
    "fp32": ("none", False, False),
    "bf16": ("bf16", False, False),
    "fp16 + GradScaler": ("fp16", False, False),
    "channels_last": ("none", True, False),
    "bf16 + channels_last": ("bf16", True, False),
    "bf16 + channels_last + torch.compile": ("bf16", True, True),
}


def random_masks(model: nn.Module, seed: int = 0) -> Scores:
    """Masks keeping a random 10% of every prunable weight tensor."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: (torch.rand(params[n].shape, generator=g) >= SPARSITY).float()
            for n in compressors.prunable_names(model)}


def cifar_loader(device: torch.device, n: int, batch: int, train: bool) -> DeviceLoader:
    """CIFAR-shaped random uint8 images and labels as a device loader (normalised as CIFAR-10)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
    return DeviceLoader(images, torch.randint(0, 10, (n,), generator=g), batch_size=batch, device=device,
                        mean=Cifar10.mean, std=Cifar10.std, train=train, seed=0, padding=PADDING, flip=True)


@dataclasses.dataclass
class MaskedTraining:
    stats: EpochStats
    revived: int  # pruned weights that are nonzero after training
    kept_changed: float  # fraction of the kept weights that changed


def masked_training(model: nn.Module, device: torch.device, mode: str, steps: int, enforce: bool = True,
                    batch: int = 16) -> MaskedTraining:
    """``steps`` SGD steps (lr 0.03, momentum 0.9, weight decay 5e-4, as the paper) of the 90%-masked ``model``
    through ``engine.loop.train_epoch`` in ``mode`` (the masks enforced unless not ``enforce``)."""
    amp, channels_last, compile = MODES[mode]
    masks = {n: m.to(device) for n, m in random_masks(model).items()}
    net = prepare_model(model, device, channels_last=channels_last, compile=compile, log=lambda s: None)
    enforcer = MaskEnforcer(model, masks)
    enforcer.apply_to_weights()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=5e-4)
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in masks}
    stats = train_epoch(net, cifar_loader(device, steps * batch, batch, train=True), LOSS, opt, device,
                        enforcer if enforce else None, amp=amp, scaler=make_scaler(device, amp),
                        channels_last=channels_last)
    revived = sum(int(((params[n] != 0) & (m == 0)).sum()) for n, m in masks.items())
    changed = sum(int(((params[n] != before[n]) & (m != 0)).sum()) for n, m in masks.items())
    return MaskedTraining(stats, revived, changed / sum(int((m != 0).sum()) for m in masks.values()))


@gpu
@pytest.mark.parametrize("mode", list(MODES))
def test_pruned_weights_stay_zero_through_masked_training_on_cuda(mode: str, device: torch.device) -> None:
    run = masked_training(build(device=device), device, mode, steps=8)
    assert run.stats.samples == 8 * 16 and math.isfinite(run.stats.loss)
    assert run.revived == 0
    assert run.kept_changed > 0.5  # weight decay moves every kept weight on each step taken


@gpu
@pytest.mark.parametrize("amp,channels_last,tol", [("none", True, 1e-4), ("bf16", False, 1e-2), ("bf16", True, 1e-2)])
def test_evaluation_on_cuda_gives_the_cpu_loss_and_under_amp_or_channels_last_the_fp32_one(
        amp: str, channels_last: bool, tol: float, device: torch.device) -> None:
    cpu_model = build().eval()
    with torch.no_grad():  # logits of a few units (at init ~0.02, where any output gives a loss of ln 10)
        cpu_model.get_submodule(compressors.classifier_name(cpu_model)).weight.mul_(200)
    model = copy.deepcopy(cpu_model).to(device)
    cpu = evaluate(cpu_model, cifar_loader(CPU, 256, 128, train=False), LOSS, CPU, 10)
    fp32 = evaluate(model, cifar_loader(device, 256, 128, train=False), LOSS, device, 10)
    assert cpu["loss"] > 3 and abs(fp32["loss"] - cpu["loss"]) <= 1e-4 * cpu["loss"]
    net = prepare_model(model, device, channels_last=channels_last, log=lambda s: None)
    got = evaluate(net, cifar_loader(device, 256, 128, train=False), LOSS, device, 10, amp=amp,
                   channels_last=channels_last)
    assert abs(got["loss"] - fp32["loss"]) <= tol * fp32["loss"]


# -------------------------------------------------------------------------------------------- structured
STRUCTURED = {"resnet18 channel": ("resnet18", {}, "channel"),
              "vit_small head+neuron": ("vit_small", {"depth": 2, "dim": 64, "heads": 4}, "head+neuron")}


@gpu
@pytest.mark.parametrize("case", list(STRUCTURED))
def test_compact_model_computes_what_the_masked_model_computes_on_cuda(case: str, device: torch.device) -> None:
    name, options, structure = STRUCTURED[case]
    model = build(name, device, **options).eval()
    structures = find_structures(model, structure, SHAPE)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in params.items() if p.dim() > 1}
    keep, record = structures.select(structures.structure_scores(scores), 0.5)
    with torch.no_grad():
        for n, m in structures.masks(keep, params).items():
            params[n].mul_(m.to(device))
    compact = structures.compact(model, keep).eval()
    assert 0 < record["structures_kept"] < record["structures_total"]
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(8, *SHAPE, generator=g).to(device)
    with torch.no_grad():
        masked, small = model(x), compact(x)
    assert float((small - masked).norm() / masked.norm()) < 1e-5


# ------------------------------------------------------------------ on the CPU: the checks themselves
@pytest.mark.parametrize("name,probe_params", [("hutch_diag", "scored"), ("hutch_pruning", "scored"),
                                               ("hts", "scored"), ("hts", "all")])
def test_the_hutchinson_reference_reproduces_the_criterion_when_both_draw_on_the_cpu(
        name: str, probe_params: str) -> None:
    shape = (3, 8, 8)
    model, batches = build("small_cnn", shape=shape, width=8), mask_batches(shape=shape)
    got, ref = hutchinson_case(name, probe_params, model, copy.deepcopy(model), batches, CPU)
    assert_same_scores(got, ref, tol=1e-5)
    got, other = hutchinson_case(name, probe_params, model, copy.deepcopy(model), batches, CPU, probe_seed=1)
    with pytest.raises(AssertionError):  # other probes: the reference does not match
        assert_same_scores(got, other)


def test_the_score_check_flags_other_scores_masks_and_non_finite_entries() -> None:
    g = torch.Generator().manual_seed(0)
    ref = {"a.weight": torch.rand(50, 20, generator=g), "b.weight": torch.rand(100, generator=g)}
    assert_same_scores({n: t * (1 + 1e-5) for n, t in ref.items()}, ref)
    nudged = {n: t.clone() for n, t in ref.items()}
    nudged["b.weight"][0] += 0.01  # 1% of the largest score, one entry: the masks still agree
    with pytest.raises(AssertionError, match="max"):
        assert_same_scores(nudged, ref)
    assert_same_scores(nudged, ref, by_masks=True)
    with pytest.raises(AssertionError, match="masks agree"):
        assert_same_scores({n: 1 - t for n, t in ref.items()}, ref, by_masks=True)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_same_scores({**ref, "a.weight": ref["a.weight"].clone().fill_(math.nan)}, ref)


def test_the_crop_matcher_flags_an_image_torchvision_cannot_give_and_skewed_draws() -> None:
    images, labels = random_images(300)
    order, x, _ = augmented(images, labels, CPU)
    out = torch.round(x * 255).to(torch.uint8)
    out[7, 0, 5, 5] ^= 1  # one pixel off by one
    keys, first = first_match(images[order], out)
    assert first[7] == -1 and int((first >= 0).sum()) == 299
    z, seen = uniformity(keys, first)
    assert z < 5 and seen
    z, seen = uniformity(keys, torch.zeros(300, dtype=torch.int64))  # always the same offset and no flip
    assert z > 5 and not seen


def test_the_zero_count_flags_pruned_weights_trained_without_the_mask() -> None:
    run = masked_training(build("small_cnn", width=8), CPU, "fp32", steps=2, enforce=False, batch=4)
    assert run.revived > 0
