"""Layer-density baselines (compressors/criteria/layer_density.py): exact kept counts, uniform and ERK
cap at 1 and the excess redistributed, random and seeded weights inside each layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import compressors
from compressors.criteria.layer_density import layer_kept_counts
from runspec import RunSpec
from utils.schema import ConfigError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 64, 3), nn.Flatten(), nn.Linear(64, 256), nn.Linear(256, 10))


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
