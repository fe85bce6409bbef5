"""PX against the authors' procedure written here from iurada/px-ntk-pruning ``lib/pruners.py`` (``PX.score``
and ``get_balanced_subset`` of commit ed6c40e, ``Pruner._global_mask``), ``lib/layers.py`` (masked layers,
whose forward multiplies the mask in) and ``train_classification.py`` (the rounds loop, the model in eval
mode), with their ``F.relu`` overriding; every way of calling a ReLU; the model untouched; the batches per
round; counts; options; from JSON on digits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from synaptic_flow_layers import MaskedConv2d, MaskedLinear, global_mask  # the authors' masked layers
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import compressors
from compressors import kept_count, prunable_names, select
from utils.schema import ConfigError

# ------------------------------------------------------------------------------ the authors' code, written here


class Net(nn.Module):
    """Their models' layout: BN layers named ``bn*``, the classifier ``fc``, ReLUs called as ``F.relu``
    (``relu``: how this copy calls them), biases on the first conv and the hidden Linear."""

    def __init__(self, conv=nn.Conv2d, linear=nn.Linear, relu: str = "F.relu") -> None:
        super().__init__()
        self.conv1 = conv(2, 4, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = conv(4, 6, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.hidden = linear(6 * 3 * 3, 8)
        self.fc = linear(8, 5)
        self.relu = relu
        self.acts = nn.ModuleList([nn.ReLU(inplace=True) for _ in range(3)])

    def act(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.relu == "module":
            return self.acts[i](x)
        if self.relu == "torch.relu":
            return torch.relu(x)
        if self.relu == "method":
            return x.relu()
        return F.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(0, self.bn1(self.conv1(x)))
        x = self.act(1, self.bn2(self.conv2(x)))
        x = self.act(2, self.hidden(torch.flatten(x, 1)))
        return self.fc(x)


def network(relu: str = "F.relu") -> nn.Module:
    torch.manual_seed(0)
    net = Net(relu=relu).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BN affine parameters and running statistics
        for m in (net.bn1, net.bn2):
            m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g, dtype=torch.float64))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g, dtype=torch.float64))
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g, dtype=torch.float64))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g, dtype=torch.float64))
    return net


def authors_copy(plain: nn.Module) -> nn.Module:
    net = Net(MaskedConv2d, MaskedLinear).double()
    net.load_state_dict(plain.state_dict(), strict=False)
    return net


def masked_parameters(model: nn.Module):
    for m in model.modules():
        if isinstance(m, (MaskedConv2d, MaskedLinear)):
            yield m.weight_mask, m.weight


def get_balanced_subset(dataset, num_samples_per_class: int) -> Subset:
    class_labels = dataset.targets
    class_to_indices: dict = {}
    for idx, label in enumerate(class_labels):
        class_to_indices.setdefault(int(label), []).append(idx)
    sampled = []
    for label in class_to_indices:
        sampled.extend(class_to_indices[label][:num_samples_per_class])
    return Subset(dataset, sampled)


def authors_px_score(model, loader) -> list[torch.Tensor]:
    """``PX.score`` as written there (``F.relu`` overridden while each copy runs)."""
    orig_relu = F.relu
    activation_maps: list = []

    def hook_activation(input, inplace=False):
        activation_maps.append(input.clone().detach())
        return orig_relu(input, inplace)

    def apply_activation(input, inplace=False):
        map = torch.where(activation_maps.pop(0) > 0, 1.0, 0.0)
        return input * map

    skip_layers = ["weight_mask", "bias_mask", "bn", "fc"]
    pk_model = copy.deepcopy(model).train()
    with torch.no_grad():
        for name, param in pk_model.state_dict().items():
            if any(n in name for n in skip_layers):
                continue
            param.pow_(2)
    jvf_model = copy.deepcopy(model).train()
    with torch.no_grad():
        for name, param in jvf_model.state_dict().items():
            if any(n in name for n in skip_layers):
                continue
            param.fill_(1.0)
    activation_model = copy.deepcopy(model).eval()
    try:
        for data, _ in loader:
            with torch.no_grad():
                F.relu = hook_activation
                activation_maps.clear()
                activation_model(data)
                F.relu = apply_activation
                z1 = jvf_model(data.pow(2))
            F.relu = lambda input, *args, **kwargs: input
            z2 = pk_model(torch.ones_like(data))
            (z1 * z2).sum().backward()
            F.relu = orig_relu
    finally:
        F.relu = orig_relu
    with torch.no_grad():
        return [torch.clone(p1.grad.abs() * p.pow(2))
                for (_, p), (_, p1) in zip(masked_parameters(model), masked_parameters(pk_model))]


def authors_rounds(model, loader, weight_remaining_ratio: float, rounds: int) -> list[torch.Tensor]:
    """``Experiment.__init__`` of ``train_classification.py`` for PX: eval mode, round k keeps
    ``weight_remaining_ratio ** (k / rounds)``; returns the last round's scores."""
    model.eval()
    for r in range(rounds):
        sparse = weight_remaining_ratio ** ((r + 1) / rounds)
        scores = authors_px_score(model, loader)
        global_mask(list(masked_parameters(model)), scores, sparse)
    return scores


def data(n_per_class: int = 3, batch_size: int = 4, seed: int = 5):
    """A labelled set and the authors' balanced loader over it: the first n of each class, unshuffled."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 2, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (40,), generator=g)
    dataset = TensorDataset(x, y)
    dataset.targets = y
    return DataLoader(get_balanced_subset(dataset, n_per_class), batch_size=batch_size, shuffle=False)


def ours(model, loader, sparsity, **opts):
    names = prunable_names(model, include_classifier=True)
    return compressors.build("px", **opts).score(model, loader, nn.CrossEntropyLoss(), sparsity=sparsity,
                                                 params=names)


# ----------------------------------------------------------------------------------------- equal to theirs
@pytest.mark.parametrize("rounds", [1, 3])
def test_equal_to_the_authors_procedure(rounds: int) -> None:
    plain, loader = network(), data()
    names = prunable_names(plain, include_classifier=True)
    theirs = authors_copy(plain)
    want = authors_rounds(theirs, loader, 0.25, rounds)
    got = ours(plain, loader, 0.75, rounds=rounds, rounds_select="kthvalue")
    assert list(got) == names
    for n, w in zip(names, want):
        torch.testing.assert_close(got[n], w, rtol=1e-10, atol=1e-13)
    total = sum(w.numel() for w in want)
    final = select(got, 0.75)
    assert sum(int(m.sum()) for m, _ in masked_parameters(theirs)) == kept_count(total, 0.75)
    for (m, _), n in zip(masked_parameters(theirs), names):
        assert torch.equal(m.bool(), final[n].bool()), n
    assert all(bool((got[n] > 0).any()) for n in names)


@pytest.mark.parametrize("relu", ["module", "torch.relu", "method"])
def test_every_way_of_calling_relu_is_replaced(relu: str) -> None:
    """nn.ReLU(inplace=True), torch.relu and Tensor.relu give the scores of the F.relu network."""
    loader = data()
    want = ours(network(), loader, 0.75, rounds=2)
    got = ours(network(relu), loader, 0.75, rounds=2)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-12, atol=0)


def test_the_score_is_the_path_formula_on_a_linear_network() -> None:
    """Without activations or BN, f_kernel(1) = W2² W1² 1 and f_act(x²) = 1·1·x², so R = Σ_b Σ_i
    (1ᵀ x_i²)·(1ᵀ W2² W1² 1) over the batch, whose derivative in p = θ² is closed-form."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    names = ["0.weight", "1.weight"]
    got = compressors.build("px", rounds=1).score(model, [(x, torch.zeros(6, dtype=torch.long))],
                                                  nn.CrossEntropyLoss(), sparsity=0.5, params=names)
    w1, w2 = model[0].weight.detach(), model[1].weight.detach()
    # the classifier (last Linear) keeps its weights: z2 = W2 (W1² 1), z1 = W2 (1 1ᵀ x²)
    ones = torch.ones(3, 4, dtype=torch.float64)
    z1 = (x.square() @ ones.T) @ w2.T       # (6, 2)
    c = z1.sum(0)                           # Σ_i z1_i, shape (2,)
    # R = Σ_i z1_i · (W2 W1² 1) → ∂R/∂(W1²)[j, k] = (W2ᵀ c)_j; ∂R/∂W2 = c (W1² 1)ᵀ (W2 unsquared)
    g1 = (w2.T @ c)[:, None].expand(3, 4)
    g2 = c[:, None] * (w1.square() @ torch.ones(4, dtype=torch.float64))[None, :]
    torch.testing.assert_close(got["0.weight"], g1.abs() * w1.square())
    torch.testing.assert_close(got["1.weight"], g2.abs() * w2.square())


# ------------------------------------------------------------------------------------ data, counts, the model
def test_batches_per_round() -> None:
    """null: the whole mask data every round (their balanced subset); b: the next b batches each round."""
    model, loader = network(), data()
    whole = ours(model, loader, 0.75, rounds=3)
    all_batches = ours(model, loader, 0.75, rounds=3, batches=len(loader))
    one = ours(model, loader, 0.75, rounds=3, batches=1)
    assert all(torch.equal(whole[n], all_batches[n]) for n in whole)
    assert any(not torch.equal(whole[n], one[n]) for n in whole)
    first = ours(model, [next(iter(loader))], 0.75, rounds=1)
    single = ours(model, loader, 0.75, rounds=1, batches=1)
    assert all(torch.equal(first[n], single[n]) for n in first)


@pytest.mark.parametrize("sparsity", [0.5, 0.93])
def test_the_public_api_gives_the_exact_final_count(sparsity: float) -> None:
    model, loader = network(), data()
    scores = compressors.build("px", rounds=4).score(model, loader, nn.CrossEntropyLoss(), sparsity=sparsity)
    names = prunable_names(model)
    assert list(scores) == names and "fc.weight" not in scores  # the classifier is not pruned by default
    total = sum(model.get_parameter(n).numel() for n in names)
    masks = compressors.select(scores, sparsity=sparsity, scope="global")
    assert sum(int(m.sum()) for m in masks.values()) == kept_count(total, sparsity)
    floor = select(scores, sparsity, "global", kept="floor")
    assert sum(int(m.sum()) for m in floor.values()) == kept_count(total, sparsity, "floor")


def test_the_model_is_never_modified() -> None:
    """compute itself leaves weights, BN running statistics and F.relu alone (the copies' train-mode BN
    updates copies of the buffers)."""
    model, loader = network(), data()
    before = copy.deepcopy(model.state_dict())
    relu = F.relu
    compressors.build("px", rounds=2).compute(model, prunable_names(model), loader, None, 0.8)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert F.relu is relu


@pytest.mark.parametrize("bad,field", [({"rounds": 0}, "rounds"), ({"batches": 0}, "batches"),
                                       ({"rounds_select": "floor"}, "rounds_select")])
def test_options_are_validated_naming_the_field(bad: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        compressors.build("px", **bad)


# ----------------------------------------------------------------------------------------- from JSON, digits
def test_runs_from_json_through_the_pipeline(make_config, tmp_path: Path) -> None:
    from launch.runner import run_config

    cfg = make_config("px", **{"training.num_steps": 1, "training.compressor.class": "px",
                               "training.compressor.sparsity": 0.9, "training.compressor.options": {"rounds": 5}})
    outcome = run_config(cfg, results=tmp_path / "results", log=lambda s: None)
    assert outcome.status == "completed", outcome.reason
    results = json.loads((Path(outcome.run_dir) / "results.json").read_text())
    assert results["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert results["criterion_diagnostics"]["rounds"] == 5 and results["criterion_diagnostics"]["finite"]
