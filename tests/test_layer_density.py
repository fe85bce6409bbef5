"""Layer-density baselines (compressors/criteria/layer_density.py): exact kept counts, uniform and ERK
cap at 1 and the excess redistributed, random and seeded weights inside each layer; ER, IGQ, Smart-Ratio
and uniform+ against their authors' procedures written here from their code (never by calling ours):
VITA-Group/Random_Pruning CIFAR/sparselearning/core.py (Masking.init 'ER' and 'uniform_plus'),
avysogorets/effective-sparsity pruning.py (igq_quotas / bs_force_igq, uniform_plus_quotas) and
JingtongSu/sanity-checking-pruning pruner/SmartRatio.py (SmartRatio)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import compressors
from compressors.criteria.layer_density import igq_densities, layer_kept_counts
from runspec import RunSpec
from utils.schema import ConfigError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 64, 3), nn.Flatten(), nn.Linear(64, 256), nn.Linear(256, 10))


class _Block(nn.Module):
    """A CIFAR-ResNet basic block: two 3x3 convs with BN, a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Sequential())

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ResNet(nn.Module):
    """ResNet-ish shapes (a 3x3 stem 3->16, stages of 16/32/64 channels, a 64->10 classifier) named as in
    Random_Pruning's CIFAR ResNets (``conv``, ``fc``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layers = nn.Sequential(_Block(16, 16, 1), _Block(16, 32, 2), _Block(32, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        out = self.layers(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return _ResNet()


def _counts(name: str, model: nn.Module, sparsity: float, classifier: bool = True, **options) -> dict[str, int]:
    names = compressors.prunable_names(model, include_classifier=classifier)
    scores = compressors.build(name, seed=0, **options).score(model, None, None, sparsity=sparsity, params=names)
    masks = compressors.select(scores, sparsity, "global")
    assert all(torch.equal(masks[n], scores[n]) for n in names)  # the global top-k keeps exactly the masks
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == compressors.kept_count(total, sparsity)
    return {n: int(scores[n].sum()) for n in names}


def _shapes(model: nn.Module, classifier: bool = True) -> dict[str, torch.Size]:
    params = dict(model.named_parameters())
    return {n: params[n].shape for n in compressors.prunable_names(model, include_classifier=classifier)}


# ------------------------------------------------------------------- the authors' procedures, from their code
def random_pruning_er(shapes: dict[str, torch.Size], density: float, erk_power_scale: float = 1.0) -> dict:
    """Random_Pruning ``Masking.init(mode='ER')``: raw (sum(shape[:2]) / prod(shape[:2]))^power, epsilon
    from the budget, the layers of the largest raw density made dense one set at a time while eps·max > 1."""
    dense_layers: set[str] = set()
    while True:
        divisor, rhs, raw = 0.0, 0.0, {}
        for name, shape in shapes.items():
            n_param = np.prod(shape)
            if name in dense_layers:
                rhs -= n_param * (1 - density)
            else:
                rhs += n_param * density
                raw[name] = (np.sum(shape[:2]) / np.prod(shape[:2])) ** erk_power_scale
                divisor += raw[name] * n_param
        epsilon = rhs / divisor
        max_prob = np.max(list(raw.values()))
        if max_prob * epsilon > 1:
            dense_layers |= {n for n, p in raw.items() if p == max_prob}
        else:
            break
    return {n: 1.0 if n in dense_layers else epsilon * raw[n] for n in shapes}


def effective_sparsity_igq(shapes: list[torch.Size], target_sparsity: float) -> list[float]:
    """effective-sparsity ``igq_quotas``: the recursive ``bs_force_igq`` on [0, 1e20], tolerance 1/N."""
    counts = [np.prod(shape) for shape in shapes]

    def bs_force_igq(areas, lengths_full, target, tolerance, f_low, f_high):
        low = [length / (f_low / area + 1) for length, area in zip(lengths_full, areas)]
        if abs(1 - sum(low) / sum(lengths_full) - target) < tolerance:
            return [1 - length / full for length, full in zip(low, lengths_full)]
        high = [length / (f_high / area + 1) for length, area in zip(lengths_full, areas)]
        if abs(1 - sum(high) / sum(lengths_full) - target) < tolerance:
            return [1 - length / full for length, full in zip(high, lengths_full)]
        force = float(f_low + f_high) / 2
        mid = [length / (force / area + 1) for length, area in zip(lengths_full, areas)]
        overall = 1 - sum(mid) / sum(lengths_full)
        f_low = force if overall < target else f_low
        f_high = force if overall > target else f_high
        return bs_force_igq(areas, lengths_full, target, tolerance, f_low, f_high)

    return bs_force_igq([1.0 / c for c in counts], list(counts), target_sparsity, 1.0 / sum(counts), 0, 1e20)


def effective_sparsity_uniform_plus(shapes: list[torch.Size], target_sparsity: float) -> np.ndarray:
    """effective-sparsity ``uniform_plus_quotas``: first layer dense, the others at s·N/(N - n_0), the last
    at min(that, 0.8) and its surplus spread over the middle layers."""
    counts = [np.prod(shape) for shape in shapes]
    sparsity = target_sparsity * sum(counts) / sum(counts[1:])
    to_distribute = max([0, (sparsity - 0.8) * counts[-1]])
    additional = to_distribute / sum(counts[1:-1])
    return np.concatenate([[0.0], [sparsity + additional] * (len(counts) - 2), [min([sparsity, 0.8])]])


def random_pruning_uniform_plus(shapes: dict[str, torch.Size], density: float, first: str, fc: str) -> dict:
    """Random_Pruning ``Masking.init(mode='uniform_plus')``: the first layer left out (dense); below density
    0.2 the classifier at 0.2 and the others at (D·N - n_first - 0.2·n_fc) / N; else all at D."""
    total = sum(math.prod(s) for s in shapes.values())
    rest = total * density - math.prod(shapes[first])
    out = {first: 1.0}
    if density < 0.2:
        rest -= math.prod(shapes[fc]) * 0.2
        other = float(rest / total)
        out.update({n: (0.2 if n == fc else other) for n in shapes if n != first})
    else:
        out.update({n: density for n in shapes if n != first})
    return out


def sanity_checking_smart_ratio(net: nn.Module, ratio: float, arch: str = "resnet",
                                linear_keep_ratio: float = 0.3) -> list[int]:
    """sanity-checking-pruning ``SmartRatio``: the kept count of every Conv2d/Linear weight (masks drawn
    aside), with its int() truncations, float32 ``Num`` and its overflow loop as written (which breaks at
    the first module, the network itself)."""
    args = SimpleNamespace(linear_keep_ratio=linear_keep_ratio, linear_decay=0, ascend=0, cubic=0, arch=arch,
                           init_prune_ratio=ratio, uniform=0)
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    num = torch.from_numpy(np.array([m.weight.numel() for m in layers])).float()
    n = len(layers)
    r = torch.rand(1, n)
    for i in range(n):
        k = i + 1
        r[0][n - k] = k ** 2 + k
    r = r[0]
    total_num, linear_num, test = 0, 0, 0
    for i, m in enumerate(layers):
        if not isinstance(m, nn.Linear):
            test = test + (int(num[i] * r[i] / (i + 1) ** 2) if args.arch != "resnet" else int(num[i] * r[i]))
        else:
            linear_num = linear_num + num[i]
        total_num = total_num + num[i]
    goal_num = int(total_num * (1 - args.init_prune_ratio)) - int(linear_num * args.linear_keep_ratio)
    k = goal_num / test
    i = 0
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            r[i] = r[i] * k / (i + 1) ** 2 if args.arch != "resnet" else r[i] * k
            i = i + 1
    extra, i = 0, 0
    for m in net.modules():  # the authors' overflow loop: ``if ExtraNum == 0: break`` on the first module
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not isinstance(m, nn.Linear) and r[i] >= 1:
            extra, r[i] = extra + int((r[i] - 1) * num[i]), 1
        if extra == 0:
            break
        i = i + 1
    kept = []
    for c, m in enumerate(layers):
        num_keep = int(r[c] * num[c])
        if r[c] >= 1:
            num_keep = int(num[c])
        if isinstance(m, nn.Linear):
            num_keep = int(args.linear_keep_ratio * num[c])
        kept.append(num_keep)
    return kept


# ------------------------------------------------------------- the existing rules and the shared rounding
def test_kept_counts_are_exact_proportional_and_capped() -> None:
    sizes, raw = [10, 1000, 100], [50.0, 1.0, 2.0]
    counts = layer_kept_counts(sizes, raw, 0.9)
    assert sum(counts) == round(0.1 * 1110) and counts[0] == 10  # the first tensor is capped dense
    # the rest share what is left in proportion to raw density x size: 101 = s·(1·1000 + 2·100)
    assert counts[1:] == [round(101 * 1000 / 1200), round(101 * 200 / 1200)]
    # 11 kept: largest remainders, ties to the earlier tensor
    assert layer_kept_counts([7, 7, 7], [1.0, 1.0, 1.0], 10 / 21) == [4, 4, 3]


def test_uniform_keeps_the_same_fraction_of_every_layer_and_select_reproduces_it() -> None:
    model = _net()
    names = compressors.prunable_names(model, include_classifier=True)
    scores = compressors.build("uniform", seed=1).score(model, None, None, sparsity=0.75, params=names)
    masks = compressors.select(scores, 0.75, "global")
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.25 * total)
    for n, m in masks.items():
        assert abs(float(m.mean()) - 0.25) <= 1 / m.numel() + 1e-9, n
        assert torch.equal(m, scores[n])


def test_erk_densities_follow_the_kernel_rule() -> None:
    model = _net()
    names = compressors.prunable_names(model, include_classifier=True)
    params = dict(model.named_parameters())
    scores = compressors.build("erk", seed=1).score(model, None, None, sparsity=0.5, params=names)
    dens = {n: float(scores[n].mean()) for n in names}
    raw = {n: sum(params[n].shape) / math.prod(params[n].shape) for n in names}
    free = [n for n in names if dens[n] < 1.0]
    assert dens["0.weight"] == dens["4.weight"] == 1.0 and len(free) == 2  # capped dense, the excess moved on
    ratio = dens[free[0]] / raw[free[0]]
    assert all(dens[n] / raw[n] == pytest.approx(ratio, rel=0.02) for n in free)
    total = sum(params[n].numel() for n in names)
    assert sum(int(scores[n].sum()) for n in names) == round(0.5 * total)
    assert scores.diagnostics["layer_density"] == pytest.approx(dens)


def test_the_weights_inside_a_layer_are_random_and_seeded() -> None:
    model = _net()
    a = compressors.build("erk", seed=3).score(model, None, None, sparsity=0.9)
    b = compressors.build("erk", seed=3).score(model, None, None, sparsity=0.9)
    c = compressors.build("erk", seed=4).score(model, None, None, sparsity=0.9)
    assert all(torch.equal(a[n], b[n]) for n in a) and any(not torch.equal(a[n], c[n]) for n in a)


def test_layer_scope_is_refused_for_baselines_that_set_their_own_densities(make_config) -> None:
    with pytest.raises(ConfigError) as err:
        RunSpec.load(make_config(**{"training.compressor.class": "erk", "training.compressor.mask": "layer"}))
    assert "training.compressor.mask" in str(err.value) and "valid: 'global'" in str(err.value)


def test_erk_runs_end_to_end(make_config, tmp_path) -> None:
    from launch.runner import run_config

    out = run_config(make_config(**{"training.compressor.class": "erk", "training.num_steps": 1}), results=tmp_path,
                     log=lambda s: None)
    assert out.status == "completed", out.reason


# ------------------------------------------------------------------------------------------------- er
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_er_matches_random_pruning_per_layer(sparsity: float) -> None:
    model = _resnet()
    shapes = _shapes(model)
    ours = _counts("er", model, sparsity)
    theirs = random_pruning_er(shapes, 1 - sparsity)
    for n, c in ours.items():  # the same density per tensor; the exact count is within rounding of it
        assert abs(c - theirs[n] * math.prod(shapes[n])) < 1, n
        assert (c == math.prod(shapes[n])) == (theirs[n] == 1.0), n  # the same tensors made dense
    if sparsity == 0.5:  # the cap binds: the stem, the first block and the classifier are dense (two rounds)
        assert {n for n in ours if theirs[n] == 1.0} == {"conv.weight", "layers.0.conv1.weight",
                                                          "layers.0.conv2.weight", "fc.weight"}


def test_er_ignores_the_kernel_size() -> None:
    model = _resnet()
    ours = _counts("er", model, 0.9)
    conv3, conv1 = ours["layers.1.conv1.weight"] / (32 * 16 * 9), ours["layers.1.shortcut.0.weight"] / (32 * 16)
    assert conv3 == pytest.approx(conv1, abs=1 / 512)  # 32x16x3x3 and 32x16x1x1: the same density
    assert conv3 == pytest.approx(0.1818, abs=2e-3)
    erk = _counts("erk", model, 0.9)  # ERK does count the kernel: the 1x1 shortcut is far denser there
    assert erk["layers.1.shortcut.0.weight"] / 512 > 3 * erk["layers.1.conv1.weight"] / (32 * 16 * 9)


# ------------------------------------------------------------------------------------------------- igq
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98, 0.999])
def test_igq_matches_the_authors_bisection_and_is_exact(sparsity: float) -> None:
    model = _resnet()
    shapes = _shapes(model)
    sizes = [math.prod(s) for s in shapes.values()]
    quotas = effective_sparsity_igq(list(shapes.values()), sparsity)
    assert [1 - d for d in igq_densities(sizes, sparsity)] == pytest.approx(quotas, abs=1e-12)
    ours = _counts("igq", model, sparsity)
    theirs = [n - int(q * n) for q, n in zip(quotas, sizes)]  # their prune_random 'direct': int(s·n) pruned
    assert all(abs(c - t) <= 1 for c, t in zip(ours.values(), theirs))
    assert abs(sum(theirs) - compressors.kept_count(sum(sizes), sparsity)) <= len(sizes)  # theirs: not exact
    by_size = sorted(zip(sizes, [c / n for c, n in zip(ours.values(), sizes)]))
    assert all(a[1] >= b[1] - 1 / a[0] for a, b in zip(by_size, by_size[1:]) if a[0] < b[0])  # smaller: denser


def test_igq_bisection_that_cannot_converge_is_an_error() -> None:
    with pytest.raises(ValueError, match="igq: the bisection"):
        igq_densities([10, 20], 0.5, max_steps=2)


# ------------------------------------------------------------------------------------------ smart_ratio
@pytest.mark.parametrize("sparsity", [0.9, 0.98])
@pytest.mark.parametrize("arch", ["resnet", "vgg"])
def test_smart_ratio_matches_the_authors_counts(sparsity: float, arch: str) -> None:
    model = _resnet()
    ours = list(_counts("smart_ratio", model, sparsity, divide_by_position_squared=arch != "resnet").values())
    theirs = sanity_checking_smart_ratio(model, sparsity, arch)
    assert ours[-1] == theirs[-1] == int(0.3 * 640)  # the classifier at the linear keep-ratio, int() as theirs
    sizes = [math.prod(s) for s in _shapes(model).values()]
    dense = [i for i, t in enumerate(theirs) if t == sizes[i]]
    assert [i for i, c in enumerate(ours) if c == sizes[i]] == dense
    if not dense:  # no cap: the same counts up to their int() truncations
        assert all(abs(c - t) <= 1 for c, t in zip(ours, theirs))
    else:  # their excess of the dense layers is lost: fewer kept than the target; ours pass it on
        assert sum(theirs) < sum(ours) and all(c >= t for c, t in zip(ours, theirs))


def _assert_proportional(counts: list[int], sizes: list[int], raw: list[float]) -> None:
    """The layers below density 1 share what the dense ones leave in proportion to raw x size, each count
    within one weight of its exact share."""
    free = [i for i in range(len(counts)) if counts[i] < sizes[i]]
    left = sum(counts[i] for i in free)
    weight = sum(raw[i] * sizes[i] for i in free)
    assert all(abs(counts[i] - left * raw[i] * sizes[i] / weight) < 1 for i in free)
    assert all(left * raw[i] / weight >= 1 - 1 / sizes[i] for i in range(len(counts)) if i not in free)


PROFILES = {"quadratic": lambda k: k * k + k, "linear": lambda k: k, "cubic": lambda k: k ** 3,
            "ascending": lambda k: (11 - k) ** 2 + 11 - k}


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
@pytest.mark.parametrize("profile", list(PROFILES))
def test_smart_ratio_keep_ratios_follow_the_profile_and_the_excess_is_rescaled(sparsity: float, profile: str) -> None:
    model = _resnet()  # nine convs, then the classifier: L = 10 layers, conv i (0-based) has k = 10 - i
    sizes = [math.prod(s) for s in _shapes(model).values()]
    ours = list(_counts("smart_ratio", model, sparsity, profile=profile).values())
    assert ours[-1] == 192
    _assert_proportional(ours[:-1], sizes[:-1], [PROFILES[profile](10 - i) for i in range(9)])


def test_smart_ratio_loses_the_excess_in_the_authors_code() -> None:
    model = _resnet()
    theirs, ours = sanity_checking_smart_ratio(model, 0.5), list(_counts("smart_ratio", model, 0.5).values())
    assert sum(theirs) == 34608 and sum(ours) == 38680  # theirs 10.5 % below the target at s = 0.5
    assert ours[:4] == theirs[:4] == [432, 2304, 2304, 4608]  # the same four layers dense


def test_smart_ratio_without_the_classifier_gives_the_convs_the_whole_budget() -> None:
    model = _resnet()  # prune_classifier false (the default): fc dense, still counted as layer L of the depth
    ours = _counts("smart_ratio", model, 0.98, classifier=False)
    sizes = [math.prod(s) for s in _shapes(model, classifier=False).values()]
    assert "fc.weight" not in ours and sum(ours.values()) == round(0.02 * sum(sizes))
    _assert_proportional(list(ours.values()), sizes, [(10 - i) ** 2 + 10 - i for i in range(9)])


def test_smart_ratio_target_below_the_linear_keep_ratio_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"smart_ratio: sparsity 0.999 cannot be met: the Linear layers at "
                                         r"keep-ratio 0.3 keep 192 .*valid: sparsity from"):
        _counts("smart_ratio", _resnet(), 0.999)


# ---------------------------------------------------------------------------------------- uniform_plus
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_uniform_plus_matches_effective_sparsity_quotas(sparsity: float) -> None:
    model = _resnet()
    shapes = _shapes(model)
    ours = _counts("uniform_plus", model, sparsity)
    quotas = effective_sparsity_uniform_plus(list(shapes.values()), sparsity)
    for (n, c), q in zip(ours.items(), quotas):
        assert abs(c - (1 - q) * math.prod(shapes[n])) < 1, n
    assert ours["conv.weight"] == 432 and ours["fc.weight"] >= 0.2 * 640  # first dense, classifier >= 20 %
    if sparsity > 0.8:
        assert ours["fc.weight"] == 128


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_uniform_plus_target_rule_as_random_pruning(sparsity: float) -> None:
    model = _resnet()
    shapes = _shapes(model)
    ours = _counts("uniform_plus", model, sparsity, classifier_rule="target")
    theirs = random_pruning_uniform_plus(shapes, 1 - sparsity, "conv.weight", "fc.weight")
    assert ours["conv.weight"] == 432 and ours["fc.weight"] == round(theirs["fc.weight"] * 640)
    rest = [ours[n] / math.prod(shapes[n]) for n in shapes if n not in ("conv.weight", "fc.weight")]
    assert max(rest) - min(rest) <= 1 / 512  # one density over the rest (within one weight of the smallest)
    theirs_total = sum(theirs[n] * math.prod(shapes[n]) for n in shapes)
    assert abs(theirs_total - sum(ours.values())) > 10  # theirs misses the target (38896 / 7636.6 / 1533.5)


def test_uniform_plus_without_the_classifier_and_when_the_target_cannot_be_met() -> None:
    model = _resnet()
    ours = _counts("uniform_plus", model, 0.9, classifier=False)
    sizes = {n: math.prod(s) for n, s in _shapes(model, classifier=False).items()}
    assert "fc.weight" not in ours and ours["conv.weight"] == 432
    rest = [ours[n] / sizes[n] for n in sizes if n != "conv.weight"]
    assert max(rest) - min(rest) <= 1 / 512
    with pytest.raises(ValueError, match=r"uniform_plus: sparsity 0.997 cannot be met: the dense first layer "
                                         r"alone keeps 432.*valid: sparsity at most 0.99"):
        _counts("uniform_plus", model, 0.997)
    with pytest.raises(ValueError, match=r"the dense first layer keeps 432 and the classifier at least 128"):
        _counts("uniform_plus", model, 0.993)  # 542 kept: the stem fits, stem + 20 % of fc (560) does not
    assert _counts("uniform_plus", model, 0.993, classifier=False)["conv.weight"] == 432


def test_options_are_validated_naming_the_field(make_config) -> None:
    with pytest.raises(ConfigError) as err:
        RunSpec.load(make_config(**{"training.compressor.class": "uniform_plus",
                                    "training.compressor.options": {"classifier_rule": "last"}}))
    assert "training.compressor.options.classifier_rule" in str(err.value) and "'rest', 'target'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        RunSpec.load(make_config(**{"training.compressor.class": "smart_ratio",
                                    "training.compressor.options": {"linear_keep_ratio": 0}}))
    assert "training.compressor.options.linear_keep_ratio" in str(err.value)


@pytest.mark.parametrize("name", ["er", "igq", "smart_ratio", "uniform_plus"])
def test_each_rule_validates_and_runs_on_digits_through_main(name: str, make_config, tmp_path, capsys) -> None:
    import main

    path = make_config(name, **{"training.compressor.class": name, "training.num_steps": 1})
    assert main.main(["validate", str(path)]) == 0, capsys.readouterr().out
    assert main.main(["run", str(path), "--results", str(tmp_path / "results")]) == 0, capsys.readouterr().out
    (results,) = (tmp_path / "results").rglob("results.json")
    pruning = json.loads(results.read_text())  # the pruning record sits at the top level
    assert pruning["kept_parameters"] == compressors.kept_count(pruning["prunable_parameters"], 0.8)
    dens = pruning["layer_density"]
    if name == "uniform_plus":  # digits_cnn: the first conv dense, the two others at one density
        assert dens["0.weight"] == 1.0 and abs(dens["3.weight"] - dens["7.weight"]) <= 1 / 1152
