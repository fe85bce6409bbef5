"""Effective sparsity (compressors/connectivity.py) against Vysogorets & Kempe's procedures, written here from
avysogorets/effective-sparsity: ``effective_masks_synflow`` (linearised network, |w|·mask weights, all-ones
input, ``grad · |w| · mask != 0``) and ``effective_masks_denseonly`` (the reachability graph of an MLP); hand-made
masks with known disconnected weights; the re-pruning binary search (``effective_correction_from_global_scores``)
against a linear scan; the minimum layer density against its greedy definition; one run end to end."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import main
import models
from compressors import prunable_names
from compressors.connectivity import (
    UnsupportedNetwork,
    connectivity,
    effective_masks,
    effective_selection,
    with_min_density,
)


def mlp(widths=(12, 9, 7, 5)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(20, 6), nn.ReLU(), nn.Linear(6, 3))


def weight_masks(model: nn.Module, density: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: (torch.rand(p.shape, generator=gen) < density).float() for n, p in model.named_parameters()
            if n.endswith("weight") and p.dim() > 1}


def authors_synflow(model: nn.Sequential, masks: dict[str, torch.Tensor], input_shape) -> dict[str, torch.Tensor]:
    """``effective_masks_synflow``: a copy without BN and activations, max pooling -> average pooling, zero
    biases, weights |w|·mask, an all-ones input; effective = grad·|w|·mask != 0 (float64 here: small nets)."""
    layers, names = [], {}
    for i, m in enumerate(model):
        if isinstance(m, (nn.BatchNorm2d, nn.ReLU)):
            continue
        if isinstance(m, nn.MaxPool2d):
            m = nn.AvgPool2d(m.kernel_size, m.stride)
        else:
            m = copy.deepcopy(m).double()
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            names[len(layers)] = f"{i}.weight"
            with torch.no_grad():
                m.weight.copy_(m.weight.abs() * masks[f"{i}.weight"])
                m.bias.zero_()
        layers.append(m)
    twin = nn.Sequential(*layers)
    twin(torch.ones(1, *input_shape, dtype=torch.float64)).sum().backward()
    return {names[j]: ((twin[j].weight.grad * twin[j].weight.abs() * masks[names[j]]) != 0).float() for j in names}


def authors_denseonly(masks: list[np.ndarray]) -> list[np.ndarray]:
    """``effective_masks_denseonly`` (their masks are (in, out)): units reachable from the input times units
    reaching the output, then each mask times the outer product of its two ends' activity."""
    way_out, nxt = [np.ones(masks[-1].shape[1])], np.ones(masks[-1].shape[1])
    for m in masks[::-1]:
        nxt = (m @ nxt) > 0
        way_out.append(nxt)
    way_out = way_out[::-1]
    way_in, prev = [np.ones(masks[0].shape[0])], np.ones(masks[0].shape[0])
    for m in masks:
        prev = (prev @ m) > 0
        way_in.append(prev)
    act = [a * b for a, b in zip(way_in, way_out)]
    return [m * np.outer(act[i], act[i + 1]) for i, m in enumerate(masks)]


@pytest.mark.parametrize("seed", range(6))
def test_mlp_matches_the_authors_synflow_and_graph_procedures(seed):
    torch.manual_seed(seed)
    net = mlp()
    masks = weight_masks(net, density=0.25, seed=seed)
    ours = effective_masks(net, masks, (12,))
    theirs = authors_synflow(net, masks, (12,))
    graph = authors_denseonly([masks[f"{i}.weight"].T.numpy() for i in (0, 2, 4)])
    for j, name in enumerate(["0.weight", "2.weight", "4.weight"]):
        assert torch.equal(ours[name], theirs[name]), name
        assert np.array_equal(ours[name].T.numpy(), graph[j]), name
    assert sum(int(m.sum()) for m in ours.values()) < sum(int(m.sum()) for m in masks.values())


@pytest.mark.parametrize("seed", range(4))
def test_cnn_matches_the_authors_synflow_procedure(seed):
    torch.manual_seed(seed)
    net = cnn()
    masks = weight_masks(net, density=0.15, seed=seed)
    ours = effective_masks(net, masks, (2, 6, 6))
    theirs = authors_synflow(net, masks, (2, 6, 6))
    assert set(ours) == set(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_hand_made_mlp_masks():
    """Hidden unit 0 of layer 1 gets no input: its outgoing weights are dead; hidden unit 1 of layer 2 feeds
    nothing: its incoming weights are dead."""
    net = mlp((3, 2, 2, 1))
    m0 = torch.tensor([[0., 0., 0.], [1., 1., 0.]])       # unit 0 unreachable, unit 1 fed by inputs 0, 1
    m2 = torch.tensor([[1., 1.], [0., 1.]])               # layer-2 unit 0 from both, unit 1 from unit 1
    m4 = torch.tensor([[1., 0.]])                         # the output reads layer-2 unit 0 only
    eff = effective_masks(net, {"0.weight": m0, "2.weight": m2, "4.weight": m4}, (3,))
    assert eff["0.weight"].tolist() == m0.tolist()
    assert eff["2.weight"].tolist() == [[0., 1.], [0., 0.]]   # from the dead unit 0, and into the unfed unit 1
    assert eff["4.weight"].tolist() == [[1., 0.]]
    c = connectivity(net, {"0.weight": m0, "2.weight": m2, "4.weight": m4}, (3,))
    assert (c.total, c.kept, c.effective_kept) == (12, 6, 4)
    assert c.record()["disconnected_parameters"] == 2
    assert c.effective_sparsity == pytest.approx(1 - 4 / 12) and c.direct_sparsity == pytest.approx(1 - 6 / 12)


def test_a_dead_channel_and_a_weight_that_only_sees_padding():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 1))
    m0 = torch.zeros(2, 1, 3, 3)
    m0[0, 0, 1, 1] = 1          # channel 0: the centre tap; channel 1: nothing (dead)
    m2 = torch.zeros(1, 2, 3, 3)
    m2[0, 0, 1, 1] = 1          # reads channel 0 at the centre: connected
    m2[0, 0, 0, 0] = 1          # a corner tap: on a 1x1 input it only ever sees zero padding
    m2[0, 1, 1, 1] = 1          # reads the dead channel 1
    masks = {"0.weight": m0, "2.weight": m2, "5.weight": torch.ones(1, 1)}
    eff = effective_masks(net, masks, (1, 1, 1))
    expected = torch.zeros(1, 2, 3, 3)
    expected[0, 0, 1, 1] = 1
    assert torch.equal(eff["2.weight"], expected) and torch.equal(eff["0.weight"], m0)
    # on a 3x3 input the corner tap sees a real pixel: connected
    assert eff["2.weight"].sum() == 1 and effective_masks(net, masks, (1, 3, 3))["2.weight"][0, 0, 0, 0] == 1


def test_resnet_and_vgg_dense_masks_are_fully_connected_and_the_model_is_left_as_it_was():
    for name, shape in (("resnet20", (3, 8, 8)), ("vgg11", (3, 32, 32))):
        torch.manual_seed(0)
        net = models.build(name, num_classes=10, input_shape=shape)
        net.train()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        masks = {n: torch.ones_like(p) for n, p in net.named_parameters() if n in prunable_names(net)}
        c = connectivity(net, masks, shape)
        assert c.effective_kept == c.kept == c.total, name
        assert net.training and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
        assert all("forward" not in vars(m) for m in net.modules())
    # VGG on 8x8 images: the 3x3 convolutions after the third pooling see a 1x1 map, whose off-centre taps
    # only ever read zero padding (pixel-level paths, as the authors' SynFlow procedure)
    net = models.build("vgg11", num_classes=10, input_shape=(3, 8, 8))
    masks = {n: torch.ones_like(p) for n, p in net.named_parameters() if n in prunable_names(net)}
    density = connectivity(net, masks, (3, 8, 8)).layer_effective_density
    assert list(density.values())[-1] == pytest.approx(1 / 9) and list(density.values())[0] == 1.0


def test_resnet_residual_path_keeps_a_block_whose_branch_is_cut():
    """Cutting a block's first conv leaves its second conv without input, but the shortcut still carries the
    signal: the layers after the block stay connected."""
    net = models.build("resnet20", num_classes=10, input_shape=(3, 8, 8))
    names = prunable_names(net)
    masks = {n: torch.ones_like(p) for n, p in net.named_parameters() if n in names}
    first = next(n for n in names if "layer1.0.conv1" in n or "layers.0.0.conv1" in n or ".0.conv1" in n)
    second = first.replace("conv1", "conv2")
    masks[first].zero_()
    eff = effective_masks(net, masks, (3, 8, 8))
    assert eff[second].sum() == 0
    assert all(torch.equal(eff[n], masks[n]) for n in names if n not in (first, second))


def test_attention_is_refused():
    net = models.build("vit_small", num_classes=10, input_shape=(3, 32, 32))
    masks = {n: torch.ones_like(p) for n, p in net.named_parameters() if n in prunable_names(net)}
    with pytest.raises(UnsupportedNetwork, match="scaled_dot_product_attention"):
        effective_masks(net, masks, (3, 32, 32))
    net2 = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2))
    assert effective_masks(net2, weight_masks(net2, 1.0, 0), (4,))["0.weight"].sum() == 16  # a module: removed

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) * torch.sigmoid(self.fc(x))
    with pytest.raises(UnsupportedNetwork, match="sigmoid"):
        effective_masks(Gate(), {"fc.weight": torch.ones(2, 4)}, (4,))


def _select(scores, allowed_kept):
    """Global top-k in score order, ties to the lower index (as compressors.select)."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    order = torch.argsort(-flat, stable=True)

    def select(k):
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[order[:k]] = True
        out, off = {}, 0
        for n in names:
            out[n] = keep[off:off + scores[n].numel()].reshape(scores[n].shape).float()
            off += scores[n].numel()
        return out
    return select


@pytest.mark.parametrize("seed", range(3))
def test_reprune_finds_the_fewest_kept_weights_whose_effective_count_meets_the_target(seed):
    torch.manual_seed(seed)
    net = mlp((10, 8, 8, 4))
    scores = {n: torch.rand(p.shape) for n, p in net.named_parameters() if n.endswith("weight")}
    total = sum(s.numel() for s in scores.values())
    select = _select(scores, total)

    def effective(m):
        return effective_masks(net, m, (10,))

    def count(m):
        return int(sum(int(v.sum()) for v in m.values()))
    target = round(0.1 * total)
    masks, record = effective_selection(select, effective, target, total)
    scan = next(k for k in range(target, total + 1) if count(effective(select(k))) >= target)  # their search, linear
    assert record["reached"] and record["direct_kept"] == scan
    assert count(masks) == record["effective_kept"] >= target
    assert all(torch.equal(masks[n], effective(select(scan))[n]) for n in masks)
    assert record["probes"] <= math.ceil(math.log2(total)) + 2
    assert count(effective(masks)) == count(masks)  # nothing left disconnected


def test_reprune_says_when_the_target_cannot_be_reached():
    net = mlp((3, 2, 1))
    scores = {"0.weight": torch.rand(2, 3), "2.weight": torch.rand(1, 2)}
    allowed = {"0.weight": torch.ones(2, 3), "2.weight": torch.tensor([[1., 0.]])}  # unit 1 feeds nothing

    def select(k):
        return _select({n: torch.where(allowed[n].bool(), s, -1.0) for n, s in scores.items()}, 7)(k)
    masks, record = effective_selection(select, lambda m: effective_masks(net, m, (3,)), 5, 7)
    assert record == {"reached": False, "direct_kept": 7, "effective_kept": 4, "target_kept": 5, "probes": 2}
    assert masks["0.weight"].tolist() == [[1., 1., 1.], [0., 0., 0.]] and masks["2.weight"].tolist() == [[1., 0.]]


def greedy_min_density(scores, masks, allowed, d):
    """The definition: a tensor below d gets its top-scored allowed weights up to ceil(d·n); the same number
    of kept weights is taken, one at a time, from the lowest-scored kept weight of a tensor above its minimum."""
    masks = {n: m.clone() for n, m in masks.items()}
    need = {n: min(math.ceil(d * m.numel() - 1e-9), int(allowed[n].sum())) for n, m in masks.items()}
    added = 0
    for n, m in masks.items():
        while int(m.sum()) < need[n]:
            cand = torch.where(allowed[n].bool() & ~m.bool(), scores[n], torch.tensor(-math.inf))
            m.view(-1)[int(torch.argmax(cand.view(-1)))] = 1
            added += 1
    for _ in range(added):
        best = None
        for n, m in masks.items():
            if int(m.sum()) <= need[n]:
                continue
            kept = torch.where(m.bool(), scores[n], torch.tensor(math.inf)).view(-1)
            i = int(torch.argmin(kept))
            if best is None or kept[i] < best[0]:
                best = (float(kept[i]), n, i)
        masks[best[1]].view(-1)[best[2]] = 0
    return masks


@pytest.mark.parametrize("seed", range(4))
def test_min_layer_density_holds_with_the_exact_total(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"a": (40,), "b": (30, 5), "c": (8, 2)}
    # tensor c's scores are low: the global top-k leaves it nearly empty
    scores = {n: torch.rand(s, generator=gen) * (0.05 if n == "c" else 1.0) for n, s in shapes.items()}
    allowed = {n: (torch.rand(s, generator=gen) < 0.9).float() for n, s in shapes.items()}
    from compressors import select_remaining
    masks = select_remaining(scores, allowed, 0.8, "global")
    d = 0.15
    out = with_min_density(scores, masks, allowed, d)
    total = sum(int(m.sum()) for m in masks.values())
    assert sum(int(m.sum()) for m in out.values()) == total
    for n, m in out.items():
        assert int(m.sum()) >= min(math.ceil(d * m.numel()), int(allowed[n].sum()))
        assert not bool((m.bool() & ~allowed[n].bool()).any())
    ref = greedy_min_density(scores, masks, allowed, d)
    assert all(torch.equal(out[n], ref[n]) for n in out)
    assert int(masks["c"].sum()) < math.ceil(d * 16)  # the minimum did something
    with pytest.raises(ValueError, match="min_layer_density 0.9 needs"):
        with_min_density(scores, masks, allowed, 0.9)


def test_a_run_records_effective_sparsity_and_reprunes_to_the_target(tmp_path):
    cfg = json.loads(open("exp_configs/quickstart/random.json").read())
    cfg["training"].update(num_steps=1, max_batches=1)
    comp = cfg["training"]["compressor"]
    del comp["sparsity"]
    comp.update(compression=100, warmup=0)
    plain, repruned = tmp_path / "plain.json", tmp_path / "repruned.json"
    plain.write_text(json.dumps(cfg))
    comp.update(reprune_disconnected=True, min_layer_density=0.002)
    repruned.write_text(json.dumps(cfg))
    assert main.main(["run", str(plain), str(repruned), "--results", str(tmp_path / "res")]) == 0
    found = {json.loads((p.parent / "config.json").read_text())["training"]["compressor"]["reprune_disconnected"]:
             json.loads(p.read_text()) for p in (tmp_path / "res").rglob("results.json")}
    direct, fixed = found[False], found[True]
    assert direct["achieved_sparsity"] == pytest.approx(0.99, abs=1e-4)
    assert direct["effective_sparsity"] >= direct["achieved_sparsity"]
    assert direct["effective_kept_parameters"] + direct["disconnected_parameters"] == direct["kept_parameters"]
    assert set(direct["layer_effective_density"]) == set(direct["layer_density"])
    record = fixed["effective_pruning"]
    assert record["reached"] and record["effective_kept"] >= record["target_kept"] == direct["kept_parameters"]
    assert fixed["effective_sparsity"] <= 0.99 and fixed["disconnected_parameters"] == 0
    assert fixed["achieved_sparsity"] == pytest.approx(fixed["effective_sparsity"])
    assert min(fixed["layer_density"].values()) >= 0.002
