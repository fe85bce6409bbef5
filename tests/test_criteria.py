"""Every criterion against a naive reference loop written here (small CNN with BN), the API guarantees
(model untouched, deterministic, options validated), GraSP's sign, SynFlow against layer collapse, the
fast exact top-k, and the score cache."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from naive import LOSS, mask_batches, naive_batch_grads, naive_hutchinson, small_cnn
from torch import nn

import compressors
from compressors import prunable_names, select
from compressors.cache import ScoreCache, score_key, score_with_cache
from utils.schema import ConfigError

ALL = ["none", "random", "magnitude", "grad_norm", "snip", "grasp", "synflow", "fisher_diag", "fisher_pruner",
       "fts", "hutch_diag", "hutch_pruning", "hts"]
OPTIONS = {
    "none": set(), "magnitude": set(), "random": {"seed"}, "synflow": {"rounds", "schedule", "rounds_select"},
    "grad_norm": {"chunk_size"}, "snip": {"chunk_size", "normalise_over"}, "fisher_diag": {"chunk_size"},
    "fisher_pruner": {"chunk_size"}, "fts": {"chunk_size"},
    "grasp": {"chunk_size", "temperature", "keep", "wrt", "redraw"},
    "hutch_diag": {"chunk_size", "temperature", "probes", "seed", "probe_params"},
    "hutch_pruning": {"chunk_size", "temperature", "probes", "seed", "probe_params"},
    "hts": {"chunk_size", "temperature", "probes", "seed", "probe_params", "redraw"},
}


def assert_close_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-4) -> None:
    assert list(a) == list(b)
    for n in a:
        scale = float(b[n].abs().max()) or 1.0
        torch.testing.assert_close(a[n].double(), b[n].double(), rtol=rtol, atol=1e-5 * scale,
                                   msg=lambda m, n=n: f"{n}: {m}")


def test_all_official_names_are_registered_with_exactly_their_options() -> None:
    assert set(ALL) <= {n.lower() for n in compressors.names()}
    for name in ALL:
        assert set(compressors.build(name).options_dict()) == OPTIONS[name], name


@pytest.mark.parametrize("name,bad", [("hutch_diag", {"probes": 0}), ("hts", {"temperature": 0}),
                                      ("synflow", {"rounds": 0}), ("snip", {"chunk_size": 0}),
                                      ("grasp", {"probes": 3}), ("fts", {"temperature": 2}),
                                      ("random", {"seed": -1})])
def test_options_are_validated(name: str, bad: dict) -> None:
    with pytest.raises(ConfigError):
        compressors.build(name, **bad)


# ------------------------------------------------------------------------------ vs naive references
def _setup(sizes=(3, 3, 2)):
    model = small_cnn()
    return model, prunable_names(model), mask_batches(sizes), dict(model.named_parameters())


@pytest.mark.parametrize("chunk_size", [1, 128])
def test_gradient_criteria_equal_naive_loops(chunk_size: int) -> None:
    model, names, batches, params = _setup()
    ref = naive_batch_grads(model, names, batches)
    B = len(batches)
    summed = {n: sum(r[n] for r in ref) for n in names}
    mean = {n: v / B for n, v in summed.items()}
    fisher = {n: sum(r[n] ** 2 for r in ref) / B for n in names}
    theta = {n: params[n].detach() for n in names}
    snip_raw = {n: (theta[n] * summed[n]).abs() for n in names}
    total = sum(s.sum() for s in snip_raw.values())
    expected = {
        "grad_norm": {n: mean[n].abs() for n in names},
        "snip": {n: s / total for n, s in snip_raw.items()},
        "fisher_diag": fisher,
        "fisher_pruner": {n: 0.5 * theta[n] ** 2 * fisher[n] for n in names},
        "fts": {n: (theta[n] * mean[n] + 0.5 * theta[n] ** 2 * fisher[n]).abs() for n in names},
        "magnitude": {n: theta[n].abs() for n in names},
    }
    for name, want in expected.items():
        assert_close_dicts(compressors.build(name, **({"chunk_size": chunk_size} if name != "magnitude" else {}))
              .score(model, batches, LOSS), want)


def naive_grasp(model: nn.Module, names: list[str], batches, T: float = 200.0) -> dict[str, torch.Tensor]:
    """Wang et al. 2020 as in the original code: g over all Conv/Linear weights (no biases/BN) in a first
    loop, then H g per batch with create_graph; S = -theta * Hg / |sum S|."""
    W = prunable_names(model, include_classifier=True)
    params = dict(model.named_parameters())
    model.eval()
    g = {n: torch.zeros_like(params[n]) for n in W}
    for x, y in batches:
        for n, gr in zip(W, torch.autograd.grad(LOSS(model(x) / T, y), [params[n] for n in W])):
            g[n] += gr
    hg = {n: torch.zeros_like(params[n]) for n in W}
    for x, y in batches:
        grads = torch.autograd.grad(LOSS(model(x) / T, y), [params[n] for n in W], create_graph=True)
        z = sum((gr * g[n]).sum() for gr, n in zip(grads, W))
        for n, h in zip(W, torch.autograd.grad(z, [params[n] for n in W])):
            hg[n] += h
    S = {n: -params[n].detach() * hg[n] for n in W}
    norm = abs(sum(s.sum() for s in S.values()))
    return {n: S[n] / norm for n in names}


@pytest.mark.parametrize("chunk_size", [128, 2])  # one chunk: g and H g from one graph; else two passes
def test_grasp_equals_the_naive_loop_and_keeps_the_lowest_S(chunk_size: int) -> None:
    model, names, batches, _ = _setup()
    S = naive_grasp(model, names, batches)
    scores = compressors.build("grasp", chunk_size=chunk_size).score(model, batches, LOSS)
    assert_close_dicts(scores, {n: -s for n, s in S.items()})
    masks = select(scores, 0.7)
    kept = torch.cat([S[n][masks[n].bool()] for n in names])
    removed = torch.cat([S[n][~masks[n].bool()] for n in names])
    assert kept.max() <= removed.min()  # the largest S are removed


@pytest.mark.parametrize("name", ["hutch_diag", "hutch_pruning", "hts"])
def test_hutchinson_criteria_equal_the_naive_loop_with_the_same_probes(name: str) -> None:
    model, names, batches, params = _setup((2, 2, 1))
    diag, se = naive_hutchinson(model, names, batches, probes=4, seed=11, T=200.0)
    mean = {n: sum(r[n] for r in naive_batch_grads(model, names, batches, T=200.0)) / len(batches) for n in names}
    theta = {n: params[n].detach() for n in names}
    want = {"hutch_diag": diag,
            "hutch_pruning": {n: 0.5 * theta[n] ** 2 * diag[n] for n in names},
            "hts": {n: (theta[n] * mean[n] + 0.5 * theta[n] ** 2 * diag[n]).abs() for n in names}}[name]
    crit = compressors.build(name, probes=4, seed=11)
    scores = crit.score(model, batches, LOSS)
    assert_close_dicts(scores, want, rtol=1e-3)
    tensors = scores.diagnostics["tensors"]
    json.dumps(scores.diagnostics)  # JSON-serialisable for results.json
    for n in names:
        assert tensors[n]["mean_abs_diag"] == pytest.approx(float(diag[n].abs().mean()), rel=1e-3)
        assert tensors[n]["mean_stderr"] == pytest.approx(float(se[n].mean()), rel=1e-3)


def naive_synflow_mask(model: nn.Module, names: list[str], shape, sparsity: float, rounds: int) -> dict:
    """Tanaka et al. 2020 written out: positive copy of the model, ones input, masks applied in place
    between rounds, round k keeps (1 - sparsity)^(k/n); returns the final mask."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in list(net.parameters()) + [b for b in net.buffers() if b.is_floating_point()]:
            t.abs_()
    params = dict(net.named_parameters())
    original = {n: params[n].detach().clone() for n in names}
    masks = {n: torch.ones_like(params[n]) for n in names}
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for n in names:
                params[n].copy_(original[n] * masks[n])
        net.zero_grad()
        net(torch.ones((1, *shape), dtype=torch.float64)).sum().backward()
        scores = {n: (params[n].grad * params[n]).detach().abs() for n in names}
        masks = select(scores, sparsity if k == rounds else 1 - (1 - sparsity) ** (k / rounds))
    return masks


def test_synflow_equals_the_naive_iterative_loop() -> None:
    model, names, batches, _ = _setup()
    scores = compressors.build("synflow", rounds=7).score(model, batches, sparsity=0.9)
    want = naive_synflow_mask(model, names, (3, 6, 6), 0.9, 7)
    got = select(scores, 0.9)
    assert all(torch.equal(got[n], want[n]) for n in names)  # select(scores) reproduces the final mask


def vgg_like() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c = 3
    for w in (16, 16, "M", 32, 32, "M", 64, 64, 64):
        if w == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
    # PyTorch's default (uniform, bound ~ 1/sqrt(fan_in)) init: the wide late layers have the smallest
    # weights, so a global magnitude threshold at 99% removes them entirely
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def test_synflow_avoids_layer_collapse_where_magnitude_collapses() -> None:
    net = vgg_like()
    shape_loader = [(torch.zeros(1, 3, 16, 16), torch.zeros(1, dtype=torch.long))]
    magnitude = select(compressors.build("magnitude").score(net), 0.99)
    assert compressors.collapsed_layers(magnitude)  # the wide layers lose everything
    synflow = select(compressors.build("synflow", rounds=10).score(net, shape_loader, sparsity=0.99), 0.99)
    assert not compressors.collapsed_layers(synflow)
    assert compressors.global_sparsity(synflow) == pytest.approx(0.99, abs=1e-4)


# ----------------------------------------------------------------------------------- API guarantees
def _perturbed_state(model: nn.Module) -> None:
    model.train()
    model[1].eval()
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, float(i))
    model[0].weight.requires_grad_(False)


@pytest.mark.parametrize("name", ALL)
def test_score_leaves_the_model_untouched_and_is_deterministic(name: str) -> None:
    model, names, batches, _ = _setup((2, 2))
    _perturbed_state(model)
    before = copy.deepcopy(model)
    grads = [p.grad.clone() for p in model.parameters()]
    opts = {"probes": 2} if name.startswith("hutch") or name == "hts" else {}
    opts.update({"rounds": 3} if name == "synflow" else {})
    crit = compressors.build(name, **opts)
    torch.manual_seed(5)
    a = crit.score(model, batches, LOSS, sparsity=0.8)
    torch.manual_seed(5)
    b = crit.score(model, batches, LOSS, sparsity=0.8)
    assert list(a) == names and all(a[n].shape == model.get_parameter(n).shape for n in names)
    assert all(torch.equal(a[n], b[n]) for n in names)
    for (n, p), q, g in zip(model.named_parameters(), before.parameters(), grads):
        assert torch.equal(p, q) and torch.equal(p.grad, g) and p.requires_grad == q.requires_grad, n
    for b1, b2 in zip(model.buffers(), before.buffers()):
        assert torch.equal(b1, b2)
    assert [m.training for m in model.modules()] == [m.training for m in before.modules()]


def test_estimator_seed_controls_the_probes_independently_of_the_global_seed() -> None:
    model, _, batches, _ = _setup((2,))
    torch.manual_seed(0)
    a = compressors.build("hutch_diag", probes=2, seed=1).score(model, batches, LOSS)
    torch.manual_seed(1)
    b = compressors.build("hutch_diag", probes=2, seed=1).score(model, batches, LOSS)
    c = compressors.build("hutch_diag", probes=2, seed=2).score(model, batches, LOSS)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_fast_topk_matches_the_stable_sort_definition() -> None:
    from compressors.masks import topk_mask
    g = torch.Generator().manual_seed(0)
    flat = torch.randint(0, 5, (2000,), generator=g).double()  # many ties
    flat[::17] = float("nan")
    flat[::23] = float("-inf")
    for k in (0, 1, 7, 500, 1000, 1999, 2000):
        values = torch.nan_to_num(flat, nan=float("-inf"))
        order = torch.sort(values, descending=True, stable=True).indices
        want = torch.zeros(2000, dtype=torch.bool)
        want[order[:k]] = True
        assert torch.equal(topk_mask(flat, k), want), k


@pytest.mark.parametrize("case", ["random", "ties", "sample_misses"])
def test_kth_largest_is_exact_on_large_inputs(case: str) -> None:
    """Above SMALL_SELECT entries the sample bracket is used; when the strided sample is unrepresentative
    the fallback keeps the answer exact."""
    from compressors.masks import SMALL_SELECT, kth_largest
    n = SMALL_SELECT + 12345
    g = torch.Generator().manual_seed(1)
    values = torch.rand(n, generator=g)
    if case == "ties":
        values = torch.randint(0, 7, (n,), generator=g).float()
    elif case == "sample_misses":  # every sampled position holds a huge value
        values[:: n // (1 << 16)] = 1e6
    for k in (1, 1000, n // 3, n // 2, n - 5, n):
        want = torch.sort(values, descending=True).values[k - 1]
        assert float(kth_largest(values, k)) == float(want), (case, k)


# ---------------------------------------------------------------------------------------- the cache
def test_score_cache_hits_validates_and_survives_corruption(tmp_path: Path) -> None:
    model, names, batches, _ = _setup((2, 2))
    crit = compressors.build("hutch_diag", probes=2, seed=3)
    s1, info1 = score_with_cache(crit, model, batches, LOSS, names=names, sparsity=None, cache_dir=tmp_path)
    assert info1["score_cache"] == "miss"
    s2, info2 = score_with_cache(crit, model, batches, LOSS, names=names, sparsity=None, cache_dir=tmp_path)
    assert info2["score_cache"] == "hit" and all(torch.equal(s1[n], s2[n]) for n in names)
    assert s2.diagnostics["tensors"] == s1.diagnostics["tensors"]  # restored from the entry
    # corrupt entry: ignored and recomputed (then rewritten)
    path = ScoreCache(tmp_path).path(crit.name, info1["score_cache_key"])
    path.write_bytes(b"not a torch file")
    s3, info3 = score_with_cache(crit, model, batches, LOSS, names=names, sparsity=None, cache_dir=tmp_path)
    assert info3["score_cache"] == "miss" and all(torch.allclose(s1[n], s3[n]) for n in names)
    # anything the scores depend on changes the key: weights, buffers, data, options, iterative sparsity
    key = score_key(crit, model, names, batches, LOSS)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-3
    assert score_key(crit, model, names, batches, LOSS) != key
    model[1].running_mean.add_(1e-3)
    assert score_key(crit, model, names, batches, LOSS) != key
    assert score_key(crit, model, names, mask_batches((2, 1)), LOSS) != score_key(crit, model, names, batches, LOSS)
    other = compressors.build("hutch_diag", probes=3, seed=3)
    assert score_key(other, model, names, batches, LOSS) != score_key(crit, model, names, batches, LOSS)
    syn = compressors.build("synflow", rounds=2)
    assert (score_key(syn, model, names, batches, None, sparsity=0.5)
            != score_key(syn, model, names, batches, None, sparsity=0.9))
    snip = compressors.build("snip")
    assert score_key(snip, model, names, batches, LOSS) == score_key(snip, model, names, batches, LOSS)


def test_trainer_reuses_scores_across_sparsities(make_config, tmp_path: Path) -> None:
    from launch.runner import run_config
    base = {"training.num_steps": 1, "training.compressor.class": "fts"}
    a = run_config(make_config("a", **base, **{"training.compressor.sparsity": 0.5}), results=tmp_path,
                   log=lambda s: None)
    b = run_config(make_config("b", **base, **{"training.compressor.sparsity": 0.8,
                                               "training.compressor.mask": "layer"}),
                   results=tmp_path, log=lambda s: None)
    ra = json.loads((Path(a.run_dir) / "results.json").read_text())
    rb = json.loads((Path(b.run_dir) / "results.json").read_text())
    assert (ra["score_cache"], rb["score_cache"]) == ("miss", "hit")
    assert ra["score_cache_key"] == rb["score_cache_key"]
    assert rb["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_a_score_cache_entry_with_flipped_bytes_is_recomputed_not_reused(make_config, tmp_path: Path) -> None:
    from helpers import flip_tensor_byte

    from launch.runner import run_config
    from utils.io import load_torch

    cfg = make_config(**{"training.num_steps": 1})
    first = run_config(cfg, results=tmp_path, log=lambda s: None)
    (entry,) = (tmp_path / "score_cache").glob("snip-*.pt")
    flip_tensor_byte(entry)  # the key is kept: only the digest tells the scores are not the ones computed
    with pytest.warns(UserWarning, match=r"score cache entry not used.*content digest mismatch"):
        again = run_config(cfg, results=tmp_path, force=True, log=lambda s: None)
    results = json.loads((Path(again.run_dir) / "results.json").read_text())
    assert results["score_cache"] == "miss" and again.test_acc == first.test_acc
    assert load_torch(entry)["key"]  # rewritten intact


def test_scores_that_are_not_finite_are_neither_used_nor_cached(tmp_path: Path) -> None:
    model, names, batches, _ = _setup((2, 2))
    crit = compressors.build("hutch_diag", probes=2, seed=3)
    crit.compute = lambda *a: {n: torch.full_like(p, float("nan")) for n, p in model.named_parameters() if n in names}
    with pytest.raises(ValueError, match=r"criterion 'hutch_diag' gave scores that are not finite"):
        score_with_cache(crit, model, batches, LOSS, names=names, sparsity=None, cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.pt"))
    with pytest.raises(ValueError, match="not finite"):
        compressors.check_scores({"w": torch.tensor([1.0, float("inf")])}, "x")
    with pytest.raises(ValueError, match="m.pt: the mask of w holds values other than 0 and 1"):
        compressors.check_masks({"w": torch.tensor([1.0, 0.5])}, "m.pt")
