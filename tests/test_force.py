"""Iter-SNIP, FORCE and GraSP-It against the authors' procedure written here from naver/force
``pruning/pruning_algos.py`` (``iterative_pruning``, ``get_average_saliencies``, ``get_average_gradients``,
``get_mask``) and ``pruning/mask_networks.py`` (``apply_prune_mask``); weights coming back (FORCE) or not
(Iter-SNIP); seeds; options; each name from JSON through the pipeline on digits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compressors
from compressors import kept_count, prunable_names, select
from utils.schema import ConfigError

METHOD = {"iter_snip": 1, "grasp_it": 2, "force": 3}


def plain_cnn() -> nn.Module:
    """No BN: the authors score in train mode, this project in eval mode (running statistics); without BN the
    two are the same network.  Tanh: no dead units, so no saliency is exactly 0 (the authors keep every weight
    tied with a round's threshold, ours exactly the count: with many zeros the two differ)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                         nn.Tanh(), nn.Flatten(), nn.Linear(8 * 3 * 3, 12), nn.Tanh(), nn.Linear(12, 4)).double()


def batches(count: int = 6, size: int = 8, seed: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every class in every batch: nll on the logits gives the classifier rows of absent classes no gradient."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=g, dtype=torch.float64), torch.randperm(size, generator=g) % 4)
            for _ in range(count)]


# ------------------------------------------------------------------------- the authors' code, written here
def prunable_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def apply_prune_mask(net: nn.Module, keep_masks, apply_hooks: bool = True) -> list:
    hooks = []
    for layer, keep in zip(prunable_layers(net), keep_masks):
        layer.weight.data[keep == 0.0] = 0.0
        if apply_hooks:
            hooks.append(layer.weight.register_hook(lambda grads, keep=keep: grads * keep))
    return hooks


def authors_iterative_pruning(ori_net: nn.Module, stream, pruning_factor: float, prune_method: int, num_steps: int,
                              mode: str, num_batches: int, loss=F.nll_loss) -> list[torch.Tensor]:
    """``iterative_pruning`` as the authors wrote it; ``stream`` hands out the next batch (their
    ``next(iter(train_dataloader))`` draws a new one from a shuffling loader), ``loss`` is their
    ``F.nll_loss`` on the raw logits unless given."""

    def average_gradients(net):
        gradients = [0 for _ in prunable_layers(net)]
        for _ in range(num_batches):
            inputs, targets = next(stream)
            net.zero_grad()
            loss(net.forward(inputs), targets).backward()
            for i, layer in enumerate(prunable_layers(net)):
                gradients[i] += layer.weight.grad
        return [g / num_batches for g in gradients]

    def average_saliencies(net, original_weights):
        grads = average_gradients(net)
        out = []
        for i, layer in enumerate(prunable_layers(net)):
            weight = original_weights[i] if prune_method == 3 else layer.weight
            out.append(grads[i] ** 2 if prune_method == 2 else torch.abs(weight * grads[i]))
        return out

    def get_mask(saliency, factor):
        all_scores = torch.cat([torch.flatten(x) for x in saliency])
        keep = int(len(all_scores) * factor)
        threshold, _ = torch.topk(all_scores, keep, sorted=True)
        return [(m >= threshold[-1]).float() for m in saliency]

    net = copy.deepcopy(ori_net)
    original_weights = [layer.weight.detach() for layer in prunable_layers(net)] if prune_method == 3 else None
    if mode == "linear":
        steps = [1 - ((x + 1) * (1 - pruning_factor) / num_steps) for x in range(num_steps)]
    else:
        steps = [np.exp(0 - ((x + 1) * (0 - np.log(pruning_factor)) / num_steps)) for x in range(num_steps)]
    mask, hooks = None, None
    for perc in steps:
        saliency = average_saliencies(net, original_weights)
        if mask is not None and prune_method < 3:
            lowest = torch.cat([torch.flatten(x) for x in saliency]).min()
            for s, m in zip(saliency, mask):
                s[m == 0.0] = lowest
        for h in hooks or []:
            h.remove()
        mask = get_mask(saliency, perc)
        if prune_method == 3:
            net = copy.deepcopy(ori_net)
            apply_prune_mask(net, mask, apply_hooks=False)
        else:
            hooks = apply_prune_mask(net, mask, apply_hooks=True)
    return mask


def cycle(items):
    while True:
        yield from items


def ours(name: str, model, data, sparsity: float, **options) -> tuple[dict, compressors.ScoreMap]:
    names = prunable_names(model, include_classifier=True)  # the authors prune every Conv/Linear weight
    scores = compressors.build(name, **options).score(model, data, nn.CrossEntropyLoss(), sparsity=sparsity,
                                                      params=names)
    return select(scores, sparsity, kept="floor"), scores


# ------------------------------------------------------------------------------------ equal to the authors
@pytest.mark.parametrize("name", ["iter_snip", "force", "grasp_it"])
@pytest.mark.parametrize("mode,schedule", [("exp", "exponential"), ("linear", "linear")])
def test_equal_to_the_authors_iterative_pruning(name: str, mode: str, schedule: str) -> None:
    model, data = plain_cnn(), batches()
    density, steps, nb = 0.2, 5, 2
    want = authors_iterative_pruning(model, cycle(data), density, METHOD[name], steps, mode, nb)
    got, scores = ours(name, model, data, 1 - density, rounds=steps, schedule=schedule, num_batches=nb,
                       loss="nll_logits", rounds_select="floor")
    assert list(got) == prunable_names(model, include_classifier=True)
    for (n, m), w in zip(got.items(), want):
        assert torch.equal(m, w), n
    assert scores.diagnostics["rounds_done"] == steps and scores.diagnostics["finite"]


def test_the_training_loss_is_the_papers_and_changes_the_mask() -> None:
    """loss="training" (default) is the authors' procedure with cross-entropy in place of nll on the logits."""
    model, data = plain_cnn(), batches()
    want = authors_iterative_pruning(model, cycle(data), 0.1, 3, 4, "exp", 1, loss=F.cross_entropy)
    got, _ = ours("force", model, data, 0.9, rounds=4, rounds_select="floor")
    assert all(torch.equal(m, w) for m, w in zip(got.values(), want))
    nll, _ = ours("force", model, data, 0.9, rounds=4, rounds_select="floor", loss="nll_logits")
    assert any(not torch.equal(a, b) for a, b in zip(got.values(), nll.values()))


def test_force_lets_weights_come_back_iter_snip_does_not() -> None:
    model, data = plain_cnn(), batches()
    names = prunable_names(model, include_classifier=True)
    runs = {name: ours(name, model, data, 0.9, rounds=8) for name in ("force", "iter_snip", "grasp_it")}
    assert runs["force"][1].diagnostics["revived"] > 0
    assert runs["iter_snip"][1].diagnostics["revived"] == 0 and runs["grasp_it"][1].diagnostics["revived"] == 0
    # Iter-SNIP's final mask lies inside the mask of a shorter run's first round; FORCE's does not
    first = {name: ours(name, model, data, 1 - 0.1 ** (1 / 8), rounds=1)[0] for name in ("force", "iter_snip")}
    inside = {name: all(not bool((runs[name][0][n].bool() & ~first[name][n].bool()).any()) for n in names)
              for name in first}
    assert inside == {"force": False, "iter_snip": True}
    total = sum(model.get_parameter(n).numel() for n in names)
    for name, (masks, _) in runs.items():
        assert sum(int(m.sum()) for m in masks.values()) == kept_count(total, 0.9, "floor"), name


def test_seeds_a_reshuffling_mask_loader_reproducibly() -> None:
    """Fresh batches come from iterating the mask loader: with a shuffling DataLoader the masks follow
    torch's global seed (which the pipeline sets from the run seed)."""
    model = plain_cnn()
    x = torch.cat([b[0] for b in batches()])
    y = torch.cat([b[1] for b in batches()])
    loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True)

    def masks(seed: int) -> dict:
        torch.manual_seed(seed)
        return ours("force", model, loader, 0.9, rounds=4)[0]

    a, b, c = masks(1), masks(1), masks(2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_the_model_is_left_untouched() -> None:
    model, data = plain_cnn(), batches()
    before = copy.deepcopy(model.state_dict())
    ours("force", model, data, 0.9, rounds=3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("bad,field", [({"num_batches": 0}, "num_batches"), ({"schedule": "exp"}, "schedule"),
                                       ({"rounds": 0}, "rounds"), ({"loss": "nll"}, "loss"),
                                       ({"rounds_select": "official"}, "rounds_select")])
def test_options_are_validated_naming_the_field(bad: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        compressors.build("force", **bad)


# ----------------------------------------------------------------------------------- from JSON, digits
@pytest.mark.parametrize("name", ["synflow_l2", "iter_snip", "force", "grasp_it"])
def test_each_name_runs_from_json_through_the_pipeline(name: str, make_config, tmp_path: Path) -> None:
    from launch.runner import run_config

    opts = {"rounds": 3} if name == "synflow_l2" else {"rounds": 3, "num_batches": 2}
    cfg = make_config(name, **{"training.num_steps": 1, "training.compressor.class": name,
                               "training.compressor.sparsity": 0.9, "training.compressor.options": opts})
    outcome = run_config(cfg, results=tmp_path / "results", log=lambda s: None)
    assert outcome.status == "completed", outcome.reason
    results = json.loads((Path(outcome.run_dir) / "results.json").read_text())
    assert results["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert results["criterion_diagnostics"]["rounds"] == 3


def test_a_layer_mask_is_refused_with_the_valid_scope(make_config) -> None:
    from runspec import RunSpec

    cfg = json.loads(make_config("x", **{"training.compressor.class": "force",
                                         "training.compressor.mask": "layer"}).read_text())
    with pytest.raises(ConfigError, match=r"training\.compressor\.mask.*'global'"):
        RunSpec.from_dict(cfg)
