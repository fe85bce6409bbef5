"""The models of the PaI papers: He et al.'s CIFAR ResNets, Wide ResNets, LeNet-300-100, LeNet-5-Caffe, VGG-16.

Parameter counts are checked twice: the exact integer, and that integer rounded the way the defining paper
prints it (He et al. 2016 Table 6; Zagoruyko & Komodakis 2016 Table 4; SNIP, Lee et al. 2019, Table 2).
Forward passes are compared with the authors' code restated here with torch.nn.functional (the WRN of
``szagoruyko/wide-residual-networks`` ``pytorch/resnet.py``, the LeNet-5 of ``namhoonlee/snip-public``
``snip/network.py``, shortcut type A of ``facebookarchive/fb.resnet.torch`` ``models/resnet.lua``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressors
import models
from compressors.masks import kept_count
from launch.runner import run_config
from runspec import RunSpec
from utils.schema import ConfigError


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _millions(n: int, digits: int) -> str:
    return f"{n / 1e6:.{digits}f}M"


# (name, options, exact count with 10 classes on 3x32x32, the paper's figure, decimals the paper prints)
RESNETS = [
    ("resnet20", {}, 269_722, "0.27M", 2),   # He et al. 2016, Table 6
    ("resnet32", {}, 464_154, "0.46M", 2),
    ("resnet44", {}, 658_586, "0.66M", 2),
    ("resnet56", {}, 853_018, "0.85M", 2),
    ("resnet110", {}, 1_727_962, "1.7M", 1),
]
WRNS = [  # Zagoruyko & Komodakis 2016, Table 4
    ("wrn_28_10", {}, 36_479_194, "36.5M", 1),
    ("wrn_16_8", {}, 10_961_370, "11.0M", 1),
    ("wrn_40_4", {}, 8_949_210, "8.9M", 1),
    ("wrn", {"depth": 40, "widen_factor": 1}, 563_930, "0.6M", 1),
    ("wrn", {"depth": 40, "widen_factor": 2}, 2_243_546, "2.2M", 1),
    ("wrn", {"depth": 22, "widen_factor": 8}, 17_158_106, "17.2M", 1),
]


@pytest.mark.parametrize("name, options, exact, paper, digits", RESNETS + WRNS,
                         ids=[f"{m[0]}{''.join(f'-{v}' for v in m[1].values())}" for m in RESNETS + WRNS])
def test_parameter_count_matches_the_papers_table(name: str, options: dict, exact: int, paper: str,
                                                  digits: int) -> None:
    n = _count(models.build(name, num_classes=10, input_shape=(3, 32, 32), **options))
    assert n == exact
    assert _millions(n, digits) == paper


def test_wrn_28_2_count_and_the_default_wrn_is_wrn_28_10() -> None:
    assert _count(models.build("wrn_28_2")) == 1_467_610  # no figure for it in the paper's tables
    assert _count(models.build("wrn")) == 36_479_194


def test_lenet_counts_are_snips_written_out() -> None:
    mlp = models.build("lenet_300_100", num_classes=10, input_shape=(1, 28, 28))
    assert _count(mlp) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    assert round(_count(mlp) / 1e3) == 267  # SNIP Table 2: 267K
    lenet5 = models.build("lenet5", num_classes=10, input_shape=(1, 28, 28))
    conv = (1 * 25 * 20 + 20) + (20 * 25 * 50 + 50)
    assert _count(lenet5) == conv + 800 * 500 + 500 + 500 * 10 + 10 == 431_080
    assert round(_count(lenet5) / 1e3) == 431  # SNIP Table 2: 431K
    assert lenet5.fc1.in_features == 50 * 4 * 4  # 28 -> 24 -> 12 -> 8 -> 4


def test_vgg16_bn_count() -> None:
    assert _count(models.build("vgg16", num_classes=10, input_shape=(3, 32, 32))) == 14_728_266


def test_option_b_adds_exactly_the_two_projections() -> None:
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1x1 conv + BN scale and shift, at stages 2 and 3
    for depth in (20, 56):
        a = models.build(f"resnet{depth}", shortcut="A")
        b = models.build(f"resnet{depth}", shortcut="B")
        assert _count(b) - _count(a) == projections == 2_752
        assert list(a.layer2[0].shortcut.parameters()) == []
        assert isinstance(b.layer2[0].shortcut[0], nn.Conv2d) and b.layer2[0].shortcut[0].stride == (2, 2)
    assert isinstance(models.build("resnet20").layer1[0].shortcut, nn.Identity)


def test_option_a_is_fb_resnet_torchs_strided_zero_padded_identity() -> None:
    # fb.resnet.torch, shortcutType 'A': SpatialAveragePooling(1, 1, stride, stride) then Concat(Identity,
    # MulConstant(0)): the input subsampled by 2 with as many zero channels appended
    block = models.build("resnet20", shortcut="A").layer2[0]
    x = torch.randn(2, 16, 9, 9)
    sub = F.avg_pool2d(x, 1, stride=2)
    assert torch.equal(block.shortcut(x), torch.cat([sub, torch.zeros_like(sub)], dim=1))
    block.eval()
    expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + block.shortcut(x))
    assert torch.equal(block(x), expected)


def _wrn_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """szagoruyko/wide-residual-networks ``pytorch/resnet.py`` ``f`` / ``group`` / ``block`` restated with this
    model's tensors in eval mode: o1 = relu(bn0(x)); y = conv0(o1, stride); z = conv1(relu(bn1(y)));
    z + convdim(o1) if the block has one, else z + x; then relu(bn(.)), 8x8 average pool, fc."""
    def bn(m: nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, training=False)

    o = F.conv2d(x, model.conv1.weight, padding=1)
    for group in (model.layer1, model.layer2, model.layer3):
        for blk in group:
            stride = blk.conv1.stride
            o1 = F.relu(bn(blk.bn1, o))
            y = F.conv2d(o1, blk.conv1.weight, stride=stride, padding=1)
            z = F.conv2d(F.relu(bn(blk.bn2, y)), blk.conv2.weight, padding=1)
            o = z + (F.conv2d(o1, blk.shortcut.weight, stride=stride) if blk.shortcut is not None else o)
    o = F.avg_pool2d(F.relu(bn(model.bn, o)), 8, 1, 0).view(o.size(0), -1)
    return F.linear(o, model.linear.weight, model.linear.bias)


@pytest.mark.parametrize("depth, k", [(10, 1), (16, 2)])
def test_wrn_computes_what_the_authors_pytorch_code_computes(depth: int, k: int) -> None:
    torch.manual_seed(0)
    model = models.build("wrn", depth=depth, widen_factor=k, dropout=0.3)
    for m in model.modules():  # non-trivial BN statistics and affine terms
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), _wrn_reference(model, x), atol=1e-5, rtol=1e-4)
    assert (model.layer1[0].shortcut is None) == (k == 1)  # 16 -> 16k: identity only when k == 1
    model.train()  # dropout acts in training mode only, between the two convolutions
    assert not torch.equal(model(x), model(x))


def _snip_lenet5_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """namhoonlee/snip-public ``snip/network.py`` ``LeNet5.forward_pass``: conv VALID + bias -> max_pool 2 ->
    conv VALID + bias -> max_pool 2 -> flatten -> fc + relu -> fc (no activation after the convolutions)."""
    h = F.max_pool2d(F.conv2d(x, model.conv1.weight, model.conv1.bias), 2, 2)
    h = F.max_pool2d(F.conv2d(h, model.conv2.weight, model.conv2.bias), 2, 2)
    h = F.relu(F.linear(h.flatten(1), model.fc1.weight, model.fc1.bias))
    return F.linear(h, model.fc2.weight, model.fc2.bias)


def test_lenets_compute_what_snips_code_computes() -> None:
    torch.manual_seed(0)
    lenet5 = models.build("lenet5", input_shape=(1, 28, 28))
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(lenet5(x), _snip_lenet5_forward(lenet5, x), atol=1e-6)
    relu = models.build("lenet5", input_shape=(1, 28, 28), conv_relu=True)
    relu.load_state_dict(lenet5.state_dict())
    assert not torch.allclose(relu(x), lenet5(x))  # the option is not the Caffe / SNIP network
    mlp = models.build("lenet_300_100", input_shape=(1, 28, 28))
    ref = F.linear(F.relu(F.linear(F.relu(F.linear(x.flatten(1), mlp.fc1.weight, mlp.fc1.bias)),
                                   mlp.fc2.weight, mlp.fc2.bias)), mlp.fc3.weight, mlp.fc3.bias)
    assert torch.allclose(mlp(x), ref, atol=1e-6)  # snip/network.py LeNet300.forward_pass


def test_lenets_take_other_input_shapes_and_class_counts() -> None:
    mlp = models.build("lenet_300_100", num_classes=7, input_shape=(3, 32, 32))
    assert mlp.fc1.in_features == 3 * 32 * 32 and mlp(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    cifar = models.build("lenet5", num_classes=100, input_shape=(3, 32, 32))
    assert cifar.fc1.in_features == 50 * 5 * 5 and cifar(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    oblong = models.build("lenet5", input_shape=(1, 28, 40))
    assert oblong.fc1.in_features == 50 * 4 * 7 and oblong(torch.randn(1, 1, 28, 40)).shape == (1, 10)
    digits = models.build("lenet5", input_shape=(1, 8, 8), padding=2)  # 8 -> 8 -> 4 -> 4 -> 2
    assert digits.fc1.in_features == 50 * 2 * 2 and _count(digits) == 131_080
    assert models.build("lenet5", input_shape=(1, 16, 16)).fc1.in_features == 50  # the smallest unpadded input


@pytest.mark.parametrize("name, options, message", [
    ("lenet5", {}, r"input 8x8 is too small .* valid: at least 16x16, or a larger model.options.padding"),
    ("resnet20", {"shortcut": "C"}, r"model.options.shortcut: invalid value 'C'; valid: 'A', 'B'"),
    ("cifar_resnet", {"depth": 21}, r"model.options.depth: 21 is not 6n\+2; valid: 8, 14, 20"),
    ("wrn", {"depth": 30}, r"model.options.depth: 30 is not 6n\+4; valid: 10, 16, 22, 28"),
    ("wrn", {"widen_factor": 0}, r"model.options.widen_factor: value 0 is out of range; valid: \[1, inf\]"),
    ("wrn_28_10", {"dropout": 1.0}, r"model.options.dropout: value 1.0 is out of range; valid: \[0, 1\)"),
])
def test_bad_options_are_named_in_validation(name: str, options: dict, message: str) -> None:
    cfg = {"dataset": {"class": "digits"}, "model": {"class": name, "options": options}}
    with pytest.raises(ConfigError, match=message):
        RunSpec.from_dict(cfg, build=True)


def test_unknown_option_names_the_model() -> None:
    with pytest.raises(TypeError, match="model 'wrn_16_8'.*widen_factor"):
        models.build("wrn_16_8", widen_factor=4)  # a fixed-width name takes no width


def test_prunable_set_is_the_conv_and_linear_weights_without_the_classifier() -> None:
    a = models.build("resnet20")
    names = compressors.prunable_names(a)
    assert len(names) == 19 and names[0] == "conv1.weight" and "linear.weight" not in names  # 6n+1 convs
    assert all(n.endswith("conv1.weight") or n.endswith("conv2.weight") for n in names)
    b = compressors.prunable_names(models.build("resnet20", shortcut="B"))
    assert set(b) - set(names) == {"layer2.0.shortcut.0.weight", "layer3.0.shortcut.0.weight"}
    wide = compressors.prunable_names(models.build("wrn_16_8"))
    assert len(wide) == 1 + 6 * 2 + 3 and "linear.weight" not in wide  # stem, 2 convs a block, 3 projections
    assert not any(".bn" in n for n in wide)
    assert compressors.prunable_names(models.build("lenet5")) == ["conv1.weight", "conv2.weight", "fc1.weight"]
    assert compressors.prunable_names(models.build("lenet_300_100")) == ["fc1.weight", "fc2.weight"]
    assert compressors.classifier_name(models.build("lenet_300_100")) == "fc3"


FORWARD = [("resnet20", {}), ("resnet32", {"shortcut": "B"}), ("resnet56", {}), ("resnet110", {}),
           ("wrn_28_10", {}), ("wrn_16_8", {}), ("wrn_40_4", {}), ("wrn_28_2", {}), ("cifar_resnet", {"depth": 8}),
           ("lenet_300_100", {}), ("lenet5", {"padding": 2})]


@pytest.mark.parametrize("name, options", FORWARD, ids=[f[0] for f in FORWARD])
def test_forward_shape_and_gradients_on_a_small_batch(name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = models.build(name, num_classes=5, input_shape=(3, 8, 8), **options)  # small maps: cheap
    out = model(torch.randn(3, 3, 8, 8))
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1, 4])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# one model of each family through the pipeline on the 8x8 digits: pruned with SNIP at 80%, one epoch
PIPELINE = [("resnet20", {}), ("wrn", {"depth": 10, "widen_factor": 2}), ("lenet5", {"padding": 2}),
            ("lenet_300_100", {})]


@pytest.mark.parametrize("name, options", PIPELINE, ids=[p[0] for p in PIPELINE])
def test_a_model_of_each_family_runs_through_the_pipeline(name: str, options: dict, make_config,
                                                          tmp_path: Path) -> None:
    cfg = make_config(**{"model": {"class": name, "options": options}, "training.num_steps": 1})
    outcome = run_config(cfg, results=tmp_path / "results", log=lambda s: None)
    assert outcome.status == "completed", outcome.reason
    results = json.loads((Path(outcome.run_dir) / "results.json").read_text())
    model = models.build(name, num_classes=10, input_shape=(1, 8, 8), **options)
    prunable = sum(dict(model.named_parameters())[n].numel() for n in compressors.prunable_names(model))
    assert results["total_parameters"] == _count(model)
    assert results["prunable_parameters"] == prunable
    assert results["kept_parameters"] == kept_count(prunable, 0.8)
    assert math.isclose(results["achieved_sparsity"], 1 - kept_count(prunable, 0.8) / prunable)
    assert results["epochs"] == 1 and 0.0 <= results["final_test_acc"] <= 1.0
