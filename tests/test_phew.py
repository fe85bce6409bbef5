"""PHEW (compressors/criteria/phew.py) against the authors' procedure (ShreyasMalakarjunPatil/PHEW,
``PHEW/phew.py``: ``generate_probability``, ``phew_masks``), re-written as their Python loops in
benchmarks/phew.py (``authors_tables``, ``authors_phew_masks``).  The walks are random, so the masks are
compared in distribution: the transition tables equal theirs, the per-layer share of the kept weights and
the per-weight selection frequencies over many seeds agree with theirs; kept counts are exact and the mask
is reproducible from the seed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import compressors
from compressors.criteria.phew import INPUT, transition_tables, walk_graph
from runspec import RunSpec
from utils.schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SEEDS = 40


def _bench():
    spec = importlib.util.spec_from_file_location("bench_phew", ROOT / "benchmarks" / "phew.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


BENCH = _bench()


def conv_net() -> nn.Module:
    """2 convs + 2 linears; the first Linear reads the flattened 6x4x4 conv output (HW = 16)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 5))


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


class Block(nn.Module):
    """A ResNet basic block registered as the authors' (conv1, conv2, then the 1x1 shortcut conv)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


def tiny_resnet() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), Block(4, 4, 1), Block(4, 8, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def _ours(model: nn.Module, sparsity: float, seed: int, **options) -> dict[str, torch.Tensor]:
    names = compressors.prunable_names(model, include_classifier=True)
    return compressors.build("phew", seed=seed, **options).score(model, None, None, sparsity=sparsity, params=names)


def _shares(kept: list[np.ndarray]) -> np.ndarray:
    counts = np.array([k.sum() for k in kept], dtype=float)
    return counts / counts.sum()


def _compare(model: nn.Module, sparsity: float, **options) -> tuple[np.ndarray, np.ndarray, float]:
    """Over SEEDS seeds: mean per-layer share of the kept weights (ours, theirs), and the correlation of the
    per-weight selection frequencies."""
    weights = BENCH.weight_arrays(model)
    tables = BENCH.authors_tables(weights)
    mine, theirs, f_mine, f_theirs = [], [], 0.0, 0.0
    for seed in range(SEEDS):
        scores = _ours(model, sparsity, seed, **options)
        kept = [(s > 0).numpy() for s in scores.values()]
        ref, _ = BENCH.authors_phew_masks(weights, 100 * sparsity, tables, seed,
                                          kernel_conserved=options.get("kernel_conserved", False))
        mine.append(_shares(kept))
        theirs.append(_shares([r > 0 for r in ref]))
        f_mine = f_mine + np.concatenate([k.reshape(-1) for k in kept])
        f_theirs = f_theirs + np.concatenate([r.reshape(-1) for r in ref])
    mine_a, theirs_a = np.array(mine), np.array(theirs)
    se = np.sqrt(mine_a.var(0) / SEEDS + theirs_a.var(0) / SEEDS)
    corr = float(np.corrcoef(f_mine, f_theirs)[0, 1])
    return mine_a.mean(0) - theirs_a.mean(0), se, corr


def test_transition_tables_equal_the_authors_generate_probability() -> None:
    for model in (conv_net(), mlp()):
        weights = BENCH.weight_arrays(model)
        prob, reverse, kernel = BENCH.authors_tables(weights)
        for layer, w, p, r, k in zip(walk_graph(model), weights, prob, reverse, kernel):
            fwd, bwd, ker = transition_tables(layer.weight)
            np.testing.assert_allclose(fwd.numpy(), np.array(p), rtol=1e-12, atol=0)
            np.testing.assert_allclose(bwd.numpy(), np.array(r), rtol=1e-12, atol=0)
            np.testing.assert_allclose(ker.numpy(), np.array(k).reshape(w.shape[0], w.shape[1], -1), rtol=1e-12)
            assert np.allclose(fwd.sum(1).numpy(), 1) and np.allclose(bwd.sum(1).numpy(), 1)


def test_the_walk_graph_follows_the_network_and_skips_identity_shortcuts() -> None:
    layers = walk_graph(conv_net())
    assert [(x.pred, x.succ) for x in layers] == [([INPUT], [1]), ([0], [2]), ([1], [3]), ([2], [])]
    assert layers[-1].to_output and not layers[0].to_output
    res = walk_graph(tiny_resnet())
    names = [x.module for x in res]
    assert names == ["0", "2.conv1", "2.conv2", "3.conv1", "3.conv2", "3.shortcut.0", "6"]
    pred = {x.module: [names[p] for p in x.pred if p != INPUT] for x in res}
    assert pred["3.conv1"] == ["2.conv2"]  # the identity shortcut of block 2 is not an edge
    assert pred["3.shortcut.0"] == ["2.conv2"] and pred["6"] == ["3.conv2", "3.shortcut.0"]
    assert [names[s] for s in res[2].succ] == ["3.conv1", "3.shortcut.0"]


@pytest.mark.parametrize("build", [conv_net, mlp])
def test_kept_count_is_exact_and_select_keeps_exactly_the_walks_weights(build) -> None:
    model = build()
    scores = _ours(model, 0.8, seed=0)
    total = sum(s.numel() for s in scores.values())
    kept = compressors.kept_count(total, 0.8)
    assert sum(int((s > 0).sum()) for s in scores.values()) == kept
    masks = compressors.select(scores, 0.8, "global")
    assert all(torch.equal(masks[n], (scores[n] > 0).float()) for n in scores)
    values = torch.cat([s.reshape(-1) for s in scores.values()])
    assert torch.equal(values[values > 0].sort().values, torch.arange(1, kept + 1, dtype=values.dtype))
    # a smaller count keeps the weights the walks chose first: the mask at 0.9 is inside the one at 0.8
    inner = compressors.select(scores, 0.9, "global", kept="floor")
    assert all(bool((inner[n] <= masks[n]).all()) for n in scores)
    # only the prunable weights are counted: the classifier (not prunable by default) is walked through
    default = compressors.build("phew", seed=0).score(model, None, None, sparsity=0.8)
    assert set(default) == set(compressors.prunable_names(model))


def test_the_mask_is_reproducible_from_the_seed() -> None:
    model = conv_net()
    a, b, c = (_ours(model, 0.9, seed=s) for s in (3, 3, 4))
    assert all(torch.equal(a[n], b[n]) for n in a) and any(not torch.equal(a[n], c[n]) for n in a)
    compressors.build("phew").score(model, None, None, sparsity=0.9)  # seed None: drawn from torch's RNG
    torch.manual_seed(7)
    d = compressors.build("phew").score(model, None, None, sparsity=0.9)
    torch.manual_seed(7)
    e = compressors.build("phew").score(model, None, None, sparsity=0.9)
    assert all(torch.equal(d[n], e[n]) for n in d)


@pytest.mark.parametrize("build,sparsity", [(conv_net, 0.9), (mlp, 0.7)])
def test_layer_shares_and_weight_frequencies_match_the_authors_walks(build, sparsity) -> None:
    diff, se, corr = _compare(build(), sparsity)
    # the authors overshoot their int() count by less than one walk: shares (not counts) are compared
    assert np.all(np.abs(diff) <= 4 * se + 0.01), (diff, se)
    assert corr > 0.87, corr  # two runs of one procedure: ~0.92; a random mask with the same layer counts: 0.75


def test_kernel_conserved_keeps_whole_kernels_like_the_authors() -> None:
    diff, se, corr = _compare(conv_net(), 0.9, kernel_conserved=True)
    assert np.all(np.abs(diff) <= 4 * se + 0.01) and corr > 0.87, (diff, se, corr)
    scores = _ours(conv_net(), 0.9, seed=0, kernel_conserved=True)
    kernels = (scores["0.weight"] > 0).reshape(4, 3, 9).sum(2)
    assert int(((kernels > 0) & (kernels < 9)).sum()) <= 1  # whole kernels but the one cut at the exact count


def test_official_shortcut_reproduces_the_authors_resnet_walks_and_graph_differs_from_them() -> None:
    diff, se, corr = _compare(tiny_resnet(), 0.9, shortcut="official")
    assert np.all(np.abs(diff) <= 4 * se + 0.01) and corr > 0.87, (diff, se, corr)
    graph_diff, graph_se, _ = _compare(tiny_resnet(), 0.9, shortcut="graph")
    # the authors' forward walk skips block 2's last conv when it takes the next block's shortcut
    assert graph_diff[2] > 4 * graph_se[2] + 0.01, (graph_diff, graph_se)


def test_bad_options_and_layer_scope_are_refused(make_config) -> None:
    with pytest.raises(ConfigError) as err:
        compressors.build("phew", shortcut="paper")
    assert "shortcut" in str(err.value) and "graph" in str(err.value)
    with pytest.raises(ConfigError) as err:
        compressors.build("phew", walkers=0)
    assert "walkers" in str(err.value)
    with pytest.raises(ConfigError) as err:
        RunSpec.load(make_config(**{"training.compressor.class": "phew", "training.compressor.mask": "layer"}))
    assert "training.compressor.mask" in str(err.value) and "valid: 'global'" in str(err.value)
    model = conv_net()
    with pytest.raises(ValueError, match="not one of them"):
        compressors.build("phew", seed=0).score(model, None, None, sparsity=0.5, params=["3.weight", "7.bias"])


def test_phew_runs_from_json_through_the_pipeline(make_config, tmp_path) -> None:
    from launch.runner import run_config

    cfg = make_config(**{"training.compressor.class": "phew", "training.compressor.options": {"seed": 1},
                         "training.num_steps": 1})
    out = run_config(cfg, results=tmp_path, log=lambda s: None)
    assert out.status == "completed", out.reason
    mask = torch.load(next(tmp_path.rglob("mask.pt")))
    sparsity = json.loads(cfg.read_text())["training"]["compressor"]["sparsity"]
    assert sum(int(m.sum()) for m in mask.values()) == compressors.kept_count(sum(m.numel() for m in mask.values()),
                                                                               sparsity)


def test_the_benchmark_runs_in_quick_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCH.main(["--quick"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.")]
    assert len(rows) == 2
    for row, k in zip(rows, (10, 8)):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0].endswith(f"(0.8^{k})")
        assert int(cells[1].replace(",", "")) == compressors.kept_count(3832, 1 - 0.8 ** k)
        assert float(cells[4]) >= 0 and float(cells[5]) > 0 and cells[6].startswith("x")
