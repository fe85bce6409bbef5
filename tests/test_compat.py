"""general.compat "official": the official second-order PaI code's behaviours, checked against that code's
behaviour written here from its formulas (per-batch loops, substring skip rule, floor + torch.topk,
SynFlow's in-place prune loop; never by calling the project's scoring code), and seed S building the
official seed-S networks (official model definitions written here)."""

from __future__ import annotations

import copy
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressors
import data
from engine.assemble import build_criterion, initial_model, prunable_names
from runspec import RunSpec
from utils import switches
from utils.schema import ConfigError

SKIP = ("bias", "linear", "bn", "fc")
SPARSITY = 0.9


# ---------------------------------------------------------------------------------- a tiny official-style net
class Block(nn.Module):
    """The official BasicBlock layout (conv1, bn1, conv2, bn2, shortcut = Sequential(conv, BN))."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyRes(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(Block(width, 2 * width, 2))
        self.linear = nn.Linear(2 * width, 10)

    def forward(self, x):
        out = self.layer1(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def tiny_model(width: int = 4, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = TinyRes(width).to(dtype)
    with torch.no_grad():  # BN with non-trivial affine parameters and statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def mask_batches(n: int = 20, batch: int = 4, dtype=torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=gen, dtype=dtype)
    y = torch.arange(n) % 10
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


# ------------------------------------------------------------------------- the official behaviour, from formulas
def official_prunable(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if not any(s in n for s in SKIP)]


def official_mask2binary(scores: dict, sparsity: float, mask_type: str) -> dict:
    """keep max(1, int((1 - s) n)) by torch.topk over the non-skipped tensors (global) or per tensor."""
    names = [n for n in scores if not any(s in n for s in SKIP)]
    out = {}
    if mask_type == "global":
        flat = torch.cat([scores[n].reshape(-1) for n in names])
        k = max(int((1 - sparsity) * len(flat)), 1)
        keep = torch.zeros_like(flat)
        keep[torch.topk(flat, k, largest=True, sorted=False).indices] = 1
        offset = 0
        for n in names:
            out[n] = keep[offset:offset + scores[n].numel()].reshape(scores[n].shape)
            offset += scores[n].numel()
    else:
        for n in names:
            flat = scores[n].reshape(-1)
            k = max(int((1 - sparsity) * len(flat)), 1)
            keep = torch.zeros_like(flat)
            keep[torch.topk(flat, k, largest=True, sorted=False).indices] = 1
            out[n] = keep.reshape(scores[n].shape)
    return out


def per_batch_grads(model, batches, T: float = 1.0):
    out = []
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x) / T, y).backward()
        out.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
    model.zero_grad()
    return out


def official_scores(name: str, model: nn.Module, batches) -> dict:
    """The official code's score of every parameter (model in eval mode, mean CE per batch, no temperature)."""
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    if name == "magnitude":
        return {n: p.detach().abs() for n, p in params.items()}
    grads = per_batch_grads(model, batches)
    B = len(batches)
    mean = {n: sum(g[n] for g in grads) / B for n in params}
    fisher = {n: sum(g[n] ** 2 for g in grads) / B for n in params}
    theta = {n: p.detach() for n, p in params.items()}
    if name == "grad_norm":
        return {n: mean[n].abs() for n in params}
    if name == "fisher_diag":
        return fisher
    if name == "fisher_pruner":
        return {n: theta[n] ** 2 * fisher[n] / 2 for n in params}
    if name == "fts":
        return {n: (theta[n] * mean[n] + theta[n] ** 2 * fisher[n] / 2).abs() for n in params}
    if name == "snip":
        s = {n: (theta[n] * sum(g[n] for g in grads)).abs() for n in params}
        total = abs(sum(float(v.sum()) for v in s.values()))
        return {n: v / total for n, v in s.items()}
    if name == "grasp":  # g = sum_b grad, then sum_b of grad(grad_b . g): Hg; score -theta * Hg / |sum|
        g = {n: sum(gr[n] for gr in grads) for n in params}
        model.zero_grad()
        for x, y in batches:
            gf = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()), create_graph=True)
            sum((a * g[n]).sum() for n, a in zip(params, gf)).backward()
        s = {n: -theta[n] * p.grad for n, p in params.items()}
        total = abs(sum(float(v.sum()) for v in s.values()))
        return {n: v / total for n, v in s.items()}
    raise KeyError(name)


def official_synflow(model: nn.Module, sparsity: float, rounds: int, input_shape) -> tuple[dict, dict]:
    """The official prune loop: score (all parameters and buffers made positive in place, input of ones),
    mask at s^((e+1)/rounds) with the official selection, multiply the weights by the mask in place."""
    model = copy.deepcopy(model).eval()
    for e in range(rounds):
        with torch.no_grad():
            signs = {n: torch.sign(t) for n, t in model.state_dict().items()}
            for t in model.state_dict().values():
                t.abs_()
        model.zero_grad()
        model(torch.ones([1, *input_shape])).sum().backward()
        scores = {n: (p * p.grad).abs().detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for n, t in model.state_dict().items():
                t.mul_(signs[n])
        mask = official_mask2binary(scores, sparsity ** ((e + 1) / rounds), "global")
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in mask:
                    p.mul_(mask[n])
    return mask, scores


# ------------------------------------------------------------------------------------------- project side
def official_spec(criterion: str, mask: str = "global", **options) -> RunSpec:
    return RunSpec.from_dict({"general": {"compat": "official"},
                              "training": {"compressor": {"class": criterion, "sparsity": SPARSITY, "mask": mask,
                                                          "options": options}}})


def project(criterion: str, model, batches, mask: str = "global", **options):
    spec = official_spec(criterion, mask, **options)
    comp = spec.config.training.compressor
    names = prunable_names(comp, model)
    scores = build_criterion(comp).score(model, batches, nn.CrossEntropyLoss(), params=names, sparsity=SPARSITY)
    return scores, compressors.select(scores, SPARSITY, comp.mask, kept=comp.kept_count)


DETERMINISTIC = ["magnitude", "grad_norm", "snip", "grasp", "fisher_diag", "fisher_pruner", "fts"]


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("mask", ["global", "layer"])
def test_official_scores_and_masks(name, mask):
    model, batches = tiny_model(), mask_batches()
    ref = official_scores(name, model, batches)
    ref_masks = official_mask2binary(ref, SPARSITY, mask)
    scores, masks = project(name, model, batches, mask)
    assert list(scores) == official_prunable(model)  # shortcut-BN scale included, names in parameter order
    assert "layer1.0.shortcut.1.weight" in scores
    for n in scores:
        scale = float(ref[n].abs().max()) or 1.0
        torch.testing.assert_close(scores[n], ref[n], rtol=1e-4, atol=1e-5 * scale)
    assert list(masks) == list(ref_masks)
    for n in masks:
        assert torch.equal(masks[n], ref_masks[n]), n


def test_official_synflow_masks_and_schedule():
    model, batches = tiny_model(), mask_batches()
    ref_mask, ref_scores = official_synflow(model, SPARSITY, 20, (3, 8, 8))
    scores, masks = project("synflow", model, batches, rounds=20)
    for n in masks:
        torch.testing.assert_close(scores[n], ref_scores[n], rtol=1e-5, atol=1e-7)
        assert torch.equal(masks[n], ref_mask[n]), n
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == int((1 - SPARSITY) * total)
    # round one keeps 1 - 0.9^(1/20) of the weights; the paper's schedule keeps 0.1^(1/20) instead
    crit = build_criterion(official_spec("synflow", rounds=20).config.training.compressor)
    assert crit.schedule(SPARSITY)[0] == pytest.approx(SPARSITY ** (1 / 20))
    assert compressors.build("synflow", rounds=20).schedule(SPARSITY)[0] == pytest.approx(1 - 0.1 ** (1 / 20))
    # and the paper's variant gives another mask here
    paper = compressors.build("synflow", rounds=20).score(model, batches, params=list(masks), sparsity=SPARSITY)
    paper_masks = compressors.select(paper, SPARSITY)
    assert any(not torch.equal(paper_masks[n], masks[n]) for n in masks)


def test_grasp_switches_one_at_a_time():
    """Each GraSP switch alone: the sign flips the ranking; T and wrt change the scores."""
    model, batches = tiny_model(), mask_batches()
    names = compressors.prunable_names(model)
    base = compressors.build("grasp").score(model, batches, nn.CrossEntropyLoss(), params=names)
    flipped = compressors.build("grasp", keep="highest").score(model, batches, nn.CrossEntropyLoss(), params=names)
    for n in names:
        torch.testing.assert_close(flipped[n], -base[n])
    t1 = compressors.build("grasp", temperature=1.0).score(model, batches, nn.CrossEntropyLoss(), params=names)
    wrt = compressors.build("grasp", wrt="all").score(model, batches, nn.CrossEntropyLoss(), params=names)
    assert not torch.allclose(t1[names[0]], base[names[0]])
    assert not torch.allclose(wrt[names[0]], base[names[0]])


def test_hutchinson_probes_over_all_parameters_in_distribution():
    """probe_params 'all': mean = the exact Hessian diagonal, per-entry variance = sum_{j != i} H_ij^2 over
    *all* parameters (the official estimator's), not over the scored ones."""
    model, batches = tiny_model(width=2, dtype=torch.float64), mask_batches(n=20, batch=20, dtype=torch.float64)
    params = dict(model.named_parameters())
    flat_names = list(params)
    sizes = [params[n].numel() for n in flat_names]
    x, y = batches[0]
    T = 200.0

    def grad_flat(vec_params):
        out = torch.func.functional_call(model, {**dict(model.named_buffers()), **vec_params}, (x,))
        return F.cross_entropy(out / T, y)

    flat = torch.cat([params[n].detach().reshape(-1) for n in flat_names])

    def loss_of(v):
        parts = dict(zip(flat_names, [t.reshape(params[n].shape) for n, t in zip(flat_names, v.split(sizes))]))
        return grad_flat(parts)

    H = torch.autograd.functional.hessian(loss_of, flat)
    names = official_prunable(model)
    offsets = dict(zip(flat_names, np.cumsum([0] + sizes[:-1])))
    idx = torch.cat([torch.arange(offsets[n], offsets[n] + params[n].numel()) for n in names])
    scored = torch.zeros(len(flat), dtype=torch.bool)
    scored[idx] = True
    Hs = H[idx]
    off_all = (Hs ** 2).sum(1) - torch.diagonal(H)[idx] ** 2
    off_scored = (Hs[:, scored] ** 2).sum(1) - torch.diagonal(H)[idx] ** 2
    assert float(off_scored.sum()) < 0.9 * float(off_all.sum())  # the two estimators do differ

    K = 600
    for probe_params, expected in (("all", off_all), ("scored", off_scored)):
        crit = compressors.build("hutch_diag", probes=K, seed=3, probe_params=probe_params)
        res = crit.score(model, batches, nn.CrossEntropyLoss(), params=names)
        est = torch.cat([res[n].reshape(-1) for n in names])
        diag = res.diagnostics["tensors"]
        # mean: within 5 standard errors of the exact diagonal for almost every entry
        sd = expected.clamp_min(1e-30).sqrt() / K ** 0.5
        assert float(((est - torch.diagonal(H)[idx]).abs() <= 5 * sd + 1e-18).double().mean()) > 0.99
        # variance: the recorded standard errors match the analytic ones of this probe set
        ratio = sum(diag[n]["mean_stderr"] * params[n].numel() for n in names) / float(sd.sum())
        assert ratio == pytest.approx(1.0, abs=0.04), probe_params


# ----------------------------------------------------------------------------------------- resolution
def test_compat_resolves_every_switch_and_records_it():
    spec = RunSpec.from_dict({"general": {"compat": "official"}, "dataset": {"class": "cifar10"},
                              "model": {"class": "resnet18"},
                              "training": {"compressor": {"class": "grasp", "sparsity": 0.9, "warmup": 3}}})
    out = spec.to_dict()
    comp = out["training"]["compressor"]
    assert out["dataset"]["normalization"] == "official" and out["dataset"]["shuffle"] is False
    assert (comp["prunable"], comp["kept_count"], comp["warmup_mode"]) == ("official_names", "floor", "flag")
    assert (comp["mask_transform"], comp["mask_order"], comp["mask_sampling"]) == ("train", "reshuffle", "unseeded")
    assert comp["options"]["temperature"] == 1.0 and comp["options"]["keep"] == "highest"
    assert comp["options"]["wrt"] == "all"
    paper = RunSpec.from_dict({"dataset": {"class": "cifar10"}, "model": {"class": "resnet18"},
                               "training": {"compressor": {"class": "grasp", "sparsity": 0.9, "warmup": 3}}})
    pc = paper.to_dict()["training"]["compressor"]
    assert (pc["prunable"], pc["kept_count"], pc["options"]["keep"], pc["options"]["temperature"]) == \
        ("module_type", "round", "lowest", 200.0)
    # the resolved config reloads to the same identity; compat official = every switch spelled out
    assert RunSpec.from_dict(out).hash() == spec.hash() != paper.hash()
    spelled = copy.deepcopy(out)
    spelled["general"]["compat"] = "paper"
    assert RunSpec.from_dict(spelled).hash() == spec.hash()
    # spelling out the paper's values keeps the old identity
    explicit = paper.to_dict()
    assert RunSpec.from_dict(explicit).hash() == paper.hash()
    # an explicit switch wins over compat (one behaviour ablated alone)
    one = RunSpec.from_dict({"general": {"compat": "official"}, "training": {"compressor": {
        "class": "grasp", "sparsity": 0.9, "options": {"keep": "lowest"}}}})
    assert one.config.training.compressor.options["keep"] == "lowest"
    assert one.config.training.compressor.options["temperature"] == 1.0


def test_normalisation_constants_and_problems():
    assert data.get("cifar10").official_std == (0.2023, 0.1994, 0.2010)
    assert data.get("cifar10").std == (0.2470, 0.2435, 0.2616)
    assert data.get("cifar100").official_std == (0.2675, 0.2565, 0.2761)
    assert data.get("tinyimagenet").official_mean == (0.480, 0.448, 0.397)
    src = data.get("cifar10")(root="/nonexistent", download=False, normalization="official")
    assert src.normalisation(None, None, (src.mean, src.std))[1] == (0.2023, 0.1994, 0.2010)
    assert src.normalisation(None, [0.5, 0.5, 0.5], (src.mean, src.std))[1] == (0.5, 0.5, 0.5)
    # digits has no official constants: compat official keeps the measured ones, an explicit request is refused
    digits = RunSpec.from_dict({"general": {"compat": "official"}})
    assert digits.config.dataset.normalization == "measured"
    with pytest.raises(ConfigError, match="dataset.normalization"):
        RunSpec.from_dict({"dataset": {"normalization": "official"}})
    with pytest.raises(ConfigError, match="training.compressor.prunable"):
        RunSpec.from_dict({"training": {"compressor": {"prunable": "official_names", "prune_classifier": True}}})
    assert RunSpec.from_dict({"general": {"compat": "official"}, "dataset": {"class": "tinyimagenet"}}
                             ).config.dataset.shuffle is True  # its official loader shuffles


def test_mask_data_and_training_order_switches():
    splits = data.get("digits")().load()
    loading, mask = data.LoaderSettings(batch_size=32), data.MaskDataSettings(batch_size=5, per_class_samples=2)
    paper = data.build_loaders(splits, loading, mask, seed=4)
    official = data.build_loaders(splits, data.LoaderSettings(batch_size=32, shuffle=False),
                                  data.MaskDataSettings(batch_size=5, per_class_samples=2, transform="train",
                                                        order="reshuffle"), seed=4)
    assert paper.mask.dataset.dataset is splits.train_eval and official.mask.dataset.dataset is splits.train
    assert list(official.train.sampler) == list(range(len(splits.train)))
    assert list(paper.train.sampler) != list(range(len(splits.train)))
    torch.manual_seed(0)
    a = torch.cat([y for _, y in official.mask])
    b = torch.cat([y for _, y in official.mask])
    assert sorted(a.tolist()) == sorted(b.tolist()) and not torch.equal(a, b)  # reshuffled every pass
    assert [y for _, y in paper.mask][0].tolist() == [y for _, y in paper.mask][0].tolist()
    unseeded = data.MaskDataSettings(batch_size=5, per_class_samples=2, sampling="unseeded")
    drawn = [data.build_loaders(splits, loading, unseeded, seed=4).mask_indices for _ in range(2)]
    assert drawn[0] != drawn[1] and data.build_loaders(splits, loading, mask, seed=4).mask_indices == paper.mask_indices


def test_kept_count_floor_and_warmup_flag():
    assert compressors.kept_count(1000, 0.9995, "floor") == 1 and compressors.kept_count(1000, 0.9995) == 0
    assert compressors.kept_count(19, 0.9, "floor") == 1 and compressors.kept_count(19, 0.9) == 2
    spec = RunSpec.from_dict({"general": {"compat": "official"}, "training": {"compressor": {"warmup": 5}}})
    comp = spec.config.training.compressor
    from engine.stages import Warmup

    calls = []
    import engine.stages as stages

    original = stages.bn_warmup
    stages.bn_warmup = lambda model, loader, passes, device: calls.append(passes)
    try:
        run = SimpleNamespace(loaders=SimpleNamespace(set_epoch=lambda e: None), model=None,
                              capped=lambda x: x, device="cpu", state=SimpleNamespace(pruning={"warmup_seconds": 0}))
        run.loaders.train = []
        assert comp.warmup_mode == "flag"
        Warmup(comp.warmup, comp.warmup_mode).run(run)
        Warmup(comp.warmup, "passes").run(run)
    finally:
        stages.bn_warmup = original
    assert calls == [1, 5]


# -------------------------------------------------------------------- seed S = the official seed-S network
class OBasicBlock(nn.Module):  # the official models, as its repository defines them (kuangliu layout)
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))


class OResNet(nn.Module):
    def __init__(self, num_classes, tiny=False):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, 2, 1)
        self.layer2 = self._make_layer(128, 2, 2)
        self.layer3 = self._make_layer(256, 2, 2)
        self.layer4 = self._make_layer(512, 2, 2)
        if tiny:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(OBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)


VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class OVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        layers, c, i = [], 3, 0
        for x in VGG19_CFG:
            if x == "M":
                layers.append((f"maxpool_{i}", nn.MaxPool2d(2, 2)))
                i += 1
            else:
                layers.append((f"conv_{i}", nn.Conv2d(c, x, kernel_size=3, padding=1)))
                layers.append((f"bn_{i + 1}", nn.BatchNorm2d(x)))
                layers.append((f"relu_{i + 2}", nn.ReLU(inplace=True)))
                i, c = i + 3, x
        layers.append(("avgpool", nn.AvgPool2d(kernel_size=1, stride=1)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.linear = nn.Linear(512, num_classes)


OFFICIAL = {"resnet18": (lambda: OResNet(10), 10, (3, 32, 32)), "vgg19": (lambda: OVGG(10), 10, (3, 32, 32)),
            "ResNet18_TinyImageNet": (lambda: OResNet(200, tiny=True), 200, (3, 64, 64))}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_seed_builds_the_official_network(name):
    make, classes, shape = OFFICIAL[name]
    seed = 7
    torch.manual_seed(seed)
    official = make()
    spec = RunSpec.from_dict({"general": {"seed": seed}, "model": {"class": name}})
    ours = initial_model(spec.config, classes, shape)
    theirs = list(official.parameters())
    mine = list(ours.parameters())
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b)
    if name == "vgg19":  # the official names map onto ours, so the official prunable rule applies to them
        names = ours.official_parameter_names()
        assert sorted(names.values()) == sorted(n for n, _ in official.named_parameters())


def test_seed_pins_parameter_values():
    """A few values of the seed-0 networks (torch's CPU generator): a change of init order or seeding
    shows here."""
    spec = RunSpec.from_dict({"general": {"seed": 0}, "model": {"class": "resnet18"}})
    model = initial_model(spec.config, 10, (3, 32, 32))
    p = {n: t.detach() for n, t in model.named_parameters()}
    torch.manual_seed(0)
    first = nn.Conv2d(3, 64, 3, padding=1, bias=False).weight
    assert torch.equal(p["conv1.weight"], first.detach())
    got = [round(float(p["conv1.weight"].reshape(-1)[0]), 6), round(float(p["linear.weight"].reshape(-1)[0]), 6),
           round(float(p["linear.bias"][0]), 6)]
    assert got == PINNED


PINNED = [-0.001441, 0.001015, -0.015743]  # seed 0, CPU


def test_paper_switch_values_are_defaults_of_the_identity():
    """Switch tables: every mode listed for every switch, the reference mode first."""
    from runspec.config import CompressorConfig, DatasetConfig

    for cls in (DatasetConfig, CompressorConfig, compressors.get("grasp").Options, compressors.get("synflow").Options,
                compressors.get("hts").Options, compressors.get("snip").Options):
        for field, values in switches.table(cls).items():
            assert set(values) == {"paper", "official"}, (cls, field)


def test_the_official_command_line_runs_the_official_behaviour_unless_the_file_says(make_config, tmp_path, capsys):
    """Issue 21 item 3: ``--experiment pbt --params_path`` resolves general.compat to 'official' unless the file
    sets it; a plain ``run`` keeps 'paper'; every run prints its mode and config.json records it."""
    import json

    from main import main
    from runspec import RunSpec

    plain = make_config("plain", **{"training.num_steps": 1, "training.max_batches": 1})
    chosen = make_config("chosen", **{"training.num_steps": 1, "training.max_batches": 1, "general.compat": "paper",
                                      "general.seed": 1})
    results = tmp_path / "res"

    def recorded(cfg, **over) -> str:
        spec = RunSpec.load(cfg, overrides=list(over.items()))
        return json.loads((spec.run_dir(results) / "config.json").read_text())["general"]["compat"]

    assert main(["--experiment", "pbt", "--params_path", str(plain), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "general.compat is 'official' in every config that does not set it" in out and "compat: official" in out
    assert recorded(plain, **{"general.compat": "official"}) == "official"
    assert main(["--experiment", "pbt", "--params_path", str(chosen), "--results", str(results)]) == 0
    assert "compat: paper" in capsys.readouterr().out and recorded(chosen) == "paper"
    assert main(["run", str(plain), "--results", str(results)]) == 0
    assert "compat: paper" in capsys.readouterr().out and recorded(plain) == "paper"


def test_compat_official_uses_the_official_pooling_op_bit_for_bit(make_config) -> None:
    """Issue 21 item 2: the official CIFAR ResNet ends with F.avg_pool2d(out, 4); under compat official ours does
    (its logits equal that op's bit for bit), under paper it keeps nn.AdaptiveAvgPool2d(1), and the run
    identity of paper runs is unchanged by the new switch."""
    import torch.nn.functional as F

    from engine.assemble import build_model
    from runspec import RunSpec

    def official_forward(net, x):  # the official ResNet.forward, written from its code
        out = torch.relu(net.bn1(net.conv1(x)))
        out = net.layer4(net.layer3(net.layer2(net.layer1(out))))
        return net.linear(F.avg_pool2d(out, 4).view(out.size(0), -1))

    paper = RunSpec.load(make_config("p", **{"model": {"class": "resnet18"}}))
    official = RunSpec.load(make_config("o", **{"model": {"class": "resnet18"}, "general.compat": "official"}))
    assert (paper.config.model.pooling, official.config.model.pooling) == ("adaptive", "official")
    explicit = RunSpec.load(make_config("e", **{"model": {"class": "resnet18", "pooling": "adaptive"}}))
    assert explicit.hash() == paper.hash()  # a switch at its paper value is a default: identities unchanged
    torch.manual_seed(0)
    ours = build_model(official.config.model, 10, (3, 32, 32)).eval()
    torch.manual_seed(0)
    plain = build_model(paper.config.model, 10, (3, 32, 32)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), official_forward(ours, x))
        assert torch.allclose(plain(x), official_forward(plain, x), atol=1e-6)  # the two ops agree up to rounding
    assert ours.pooling == "official" and plain.pooling == "adaptive"


class Redrawing:
    """A mask loader that, like the official shuffled and augmented one, gives other batches on every pass."""

    def __init__(self, draws: list) -> None:
        self.draws, self.passes = draws, 0

    def __iter__(self):
        batches = self.draws[self.passes % len(self.draws)]
        self.passes += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self.draws[0])


def test_grasp_and_hts_draw_the_mask_data_again_for_each_pass_under_compat_official(monkeypatch):
    """Issue 21 item 1: the official GraSP (its loops GRASP_Mask_First / _Second) and HTS (its 'HTS: grad pass'
    after the Hutchinson pass) iterate the mask loader afresh for each pass; ``redraw`` (official) does the same,
    paper mode takes every quantity from the same batches."""
    model = tiny_model()
    first, second = mask_batches(12, 4), [(x.flip(0) * 0.5, y.flip(0)) for x, y in mask_batches(12, 4)]
    second = [(torch.randn_like(x), y) for x, y in second]  # another draw: other images (augmentation)
    # the official GraSP written from its code: g over the first pass, Hg over the second
    ref_model = copy.deepcopy(model).eval()
    params = dict(ref_model.named_parameters())
    ref_model.zero_grad()
    for x, y in first:
        F.cross_entropy(ref_model(x), y).backward()
    g = {n: p.grad.clone() for n, p in params.items()}
    ref_model.zero_grad()
    for x, y in second:
        gf = torch.autograd.grad(F.cross_entropy(ref_model(x), y), list(params.values()), create_graph=True)
        sum((a * g[n]).sum() for n, a in zip(params, gf)).backward()
    s = {n: -p.detach() * p.grad for n, p in params.items()}
    total = abs(sum(float(v.sum()) for v in s.values()))
    ref = {n: v / total for n, v in s.items()}
    spec = official_spec("grasp")
    assert spec.config.training.compressor.options["redraw"] is True
    comp = spec.config.training.compressor
    names = prunable_names(comp, model)
    loader = Redrawing([first, second])
    scores = build_criterion(comp).score(model, loader, nn.CrossEntropyLoss(), params=names, sparsity=SPARSITY)
    assert loader.passes == 2
    for n in names:
        scale = float(ref[n].abs().max()) or 1.0
        torch.testing.assert_close(scores[n], ref[n], rtol=1e-4, atol=1e-5 * scale)
    same = build_criterion(official_spec("grasp", redraw=False).config.training.compressor).score(
        model, Redrawing([first, second]), nn.CrossEntropyLoss(), params=names, sparsity=SPARSITY)
    assert any(not torch.allclose(same[n], ref[n], rtol=1e-3, atol=1e-6) for n in names)  # the redraw matters
    assert compressors.build("grasp").options.redraw is False  # paper: one set of batches

    # HTS: the Hutchinson pass sees the first draw, the gradient pass the second (official order)
    import compressors.criteria.hutchinson as hutchinson_module

    seen = []
    real = hutchinson_module.hutchinson_diagonal

    def recording(model, names, loader, loss_fn, **kw):  # the Hutchinson pass: record what it was given
        batches = list(loader)
        seen.append([x for x, _ in batches])
        return real(model, names, batches, loss_fn, **kw)

    monkeypatch.setattr(hutchinson_module, "hutchinson_diagonal", recording)
    hts = build_criterion(official_spec("hts", seed=5).config.training.compressor)  # the same probes below
    assert hts.options.redraw is True
    loader = Redrawing([first, second])
    got = hts.score(model, loader, nn.CrossEntropyLoss(), params=names, sparsity=SPARSITY)
    assert loader.passes == 2 and all(torch.equal(a, b) for a, b in zip(seen[0], [x for x, _ in first]))
    res = real(model, list(dict.fromkeys([n for n, _ in model.named_parameters()] + names)), first,
               nn.CrossEntropyLoss(), probes=hts.options.probes,
               generator=compressors.options.estimator_generator(hts.options.seed, torch.device("cpu")),
               temperature=hts.options.temperature, chunk_size=hts.options.chunk_size)
    grad_model = copy.deepcopy(model).eval()  # the official 'HTS: grad pass': mean over the second pass
    gparams = dict(grad_model.named_parameters())
    gbar = {n: torch.zeros_like(p) for n, p in gparams.items()}
    for x, y in second:
        grad_model.zero_grad()
        F.cross_entropy(grad_model(x) / hts.options.temperature, y).backward()
        for n, p in gparams.items():
            gbar[n] += p.grad.detach()
    for n in names:
        p = gparams[n].detach()
        want = (p * gbar[n] / len(second) + 0.5 * p ** 2 * res.diag[n]).abs()
        torch.testing.assert_close(got[n], want, rtol=1e-4, atol=1e-6 * (float(want.abs().max()) or 1.0))
