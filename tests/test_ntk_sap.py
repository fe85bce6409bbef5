"""NTK-SAP against the authors' procedure written here from YiteWang/NTK-SAP ``Pruners/pruners.py``
(``NTKSAP.score``, ``reset_BN``, ``Pruner._global_mask``), ``Layers/layers.py`` (masked Conv2d / Linear) and
``prune.py`` (``prune_loop``), fed the same random draws (re-sampled weights, Gaussian inputs, perturbations);
their single-shot script's weights; the round rule; seeds; the caller's model; options; from JSON on digits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from synaptic_flow_layers import MaskedConv2d, MaskedLinear, global_mask  # the authors' masked layers
from torch import nn

import compressors
from compressors import kept_count, prunable_names, select
from compressors.rounds import round_mask
from utils.schema import ConfigError

SEED = 1234


# ------------------------------------------------------------------------------ the authors' code, written here


def network(conv=nn.Conv2d, linear=nn.Linear) -> nn.Module:
    """Conv-BN-ReLU twice and a classifier; no biases (the authors' ``_initialize_weights`` leaves biases as they
    are, this project re-draws them with everything else: without biases the two re-samplings are the same)."""
    torch.manual_seed(0)
    return nn.Sequential(conv(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         conv(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Flatten(), linear(6 * 3 * 3, 5, bias=False)).double()


def authors_copy(plain: nn.Module) -> nn.Module:
    net = network(MaskedConv2d, MaskedLinear)
    net.load_state_dict(plain.state_dict(), strict=False)
    return net.double()


def masked_parameters(model: nn.Module):
    """``Utils/generator.py`` ``masked_parameters``: (mask, weight) of every masked layer, biases left out."""
    for m in model.modules():
        if isinstance(m, (MaskedConv2d, MaskedLinear)):
            yield m.weight_mask, m.weight


def reset_bn(net: nn.Module) -> None:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.reset_running_stats()


def authors_score(model, dataloader, draws, epsilon: float, R: int) -> list[torch.Tensor]:
    """``NTKSAP.score`` as written there; ``draws`` hands out what their code draws from torch's RNG: the
    weights of ``model._initialize_weights()``, the input ``torch.randn_like(data)`` and each
    ``torch.randn_like(p_orig.data)`` of ``perturb``."""
    pairs = list(masked_parameters(model))

    def perturb(model_orig, model_copy, delta):
        with torch.no_grad():
            for (_, p_orig), (_, p_copy), d in zip(masked_parameters(model_orig), masked_parameters(model_copy), delta):
                p_copy.data = p_orig.data + epsilon * d
        for module, module_mod in zip(model_orig.modules(), model_copy.modules()):
            if isinstance(module, nn.BatchNorm2d):
                with torch.no_grad():
                    module_mod.running_mean = module.running_mean
                    module_mod.running_var = module.running_var
                    module_mod.num_batches_tracked = module.num_batches_tracked

    for m, p in pairs:
        m.requires_grad = True
        p.requires_grad = False
    model_mod = copy.deepcopy(model)
    model_mod.eval()
    for module, module_mod in zip(model.modules(), model_mod.modules()):
        if hasattr(module, "weight_mask"):
            module_mod.weight_mask = module.weight_mask
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
            module_mod.momentum = 1.0
    for _ in range(R):
        for data, _ in dataloader:
            weights, noise, delta = next(draws)
            with torch.no_grad():  # model._initialize_weights()
                for n, p in model.named_parameters():
                    p.data.copy_(weights[n])
            input = noise
            assert input.shape == data.shape
            reset_bn(model)
            with torch.no_grad():
                output_orig = model(input)
            model.eval()
            output_orig = model(input)
            perturb(model, model_mod, delta)
            output_mod = model_mod(input)
            jac_approx = (torch.norm(output_orig - output_mod, dim=-1) ** 2).sum()
            jac_approx.backward()
            model.train()
    scores = []
    for m, p in pairs:
        scores.append(torch.clone(m.grad * (m != 0)).detach().abs_())
        m.grad.data.zero_()
        m.requires_grad = False
        p.requires_grad = True
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return scores


def authors_prune_loop(model, dataloader, draws, density: float, schedule: str, epochs: int, epsilon: float,
                       R: int) -> list[torch.Tensor]:
    """``prune_loop`` with ``train_mode=True`` (their README: --prune-train-mode True for NTK-SAP); returns the
    last round's scores, the model keeps its masks (and the weights of the last draw)."""
    model.train()
    for epoch in range(epochs):
        scores = authors_score(model, dataloader, draws, epsilon, R)
        if schedule == "exponential":
            sparse = density ** ((epoch + 1) / epochs)
        else:
            sparse = 1.0 - (1.0 - density) * ((epoch + 1) / epochs)
        global_mask(list(masked_parameters(model)), scores, sparse)
    return scores


# ------------------------------------------------------------------------------- the draws, made on both sides
def draws_for(plain: nn.Module, names: list[str], shapes: list, count: int, own_last: bool = False):
    """The draws in the criterion's order, from a generator seeded with SEED: a seed for the re-sampling
    (every module's ``reset_parameters()`` under ``torch.manual_seed(seed)``), the Gaussian input, then one
    perturbation per scored weight.  ``own_last``: the last draw's weights are the model's own."""
    gen = torch.Generator().manual_seed(SEED)
    net = copy.deepcopy(plain)
    out = []
    for j in range(count):
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        if own_last and j == count - 1:
            weights = {n: p.detach().clone() for n, p in plain.named_parameters()}
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for m in net.modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
            weights = {n: p.detach().clone() for n, p in net.named_parameters()}
        noise = torch.randn(shapes[j % len(shapes)], generator=gen, dtype=torch.float64)
        delta = [torch.randn(plain.get_parameter(n).shape, generator=gen, dtype=torch.float64) for n in names]
        out.append((weights, noise, delta))
    return iter(out)


def loader(sizes=(5, 3), seed: int = 7) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 2, 6, 6, generator=g, dtype=torch.float64), torch.zeros(n, dtype=torch.long))
            for n in sizes]


def ours(model, data, sparsity, **opts):
    opts.setdefault("seed", SEED)
    names = prunable_names(model, include_classifier=True)
    return compressors.build("ntk_sap", **opts).score(model, data, None, sparsity=sparsity, params=names)


# ----------------------------------------------------------------------------------------- equal to theirs
@pytest.mark.parametrize("schedule", ["exponential", "linear"])
@pytest.mark.parametrize("R", [1, 2])
def test_equal_to_the_authors_procedure_given_the_same_draws(schedule: str, R: int) -> None:
    plain, data = network(), loader()
    names = prunable_names(plain, include_classifier=True)
    T, density, eps = 3, 0.25, 0.01
    theirs = authors_copy(plain)
    draws = draws_for(plain, names, [x.shape for x, _ in data], T * R * len(data))
    want = authors_prune_loop(theirs, data, draws, density, schedule, T, eps, R)
    got = ours(plain, data, 1 - density, rounds=T, resamples=R, epsilon=eps, schedule=schedule,
               rounds_select="kthvalue")
    assert list(got) == names and got.diagnostics["draws_per_round"] == R * len(data)
    for n, w in zip(names, want):
        torch.testing.assert_close(got[n], w, rtol=1e-10, atol=1e-12)
    # the final mask: their kthvalue threshold keeps the same weights as select's exact count (no ties here)
    total = sum(w.numel() for w in want)
    final = select(got, 1 - density)
    kept = sum(int(m.sum()) for m, _ in masked_parameters(theirs))
    assert kept == kept_count(total, 1 - density) == sum(int(m.sum()) for m in final.values())
    for (m, _), n in zip(masked_parameters(theirs), names):
        assert torch.equal(m.bool(), final[n].bool()), n


def test_last_draw_is_the_authors_single_shot_script() -> None:
    """Their singleshot.py trains the weights of the last re-sampling; final_weights="last_draw" makes that
    draw the model's own weights, so the run trains from the weights the last draw scored."""
    plain, data = network(), loader()
    names = prunable_names(plain, include_classifier=True)
    T, density = 2, 0.25
    theirs = authors_copy(plain)
    draws = draws_for(plain, names, [x.shape for x, _ in data], T * len(data), own_last=True)
    want = authors_prune_loop(theirs, data, draws, density, "exponential", T, 0.01, 1)
    before = copy.deepcopy(plain.state_dict())
    got = ours(plain, data, 1 - density, rounds=T, rounds_select="kthvalue", final_weights="last_draw")
    for n, w in zip(names, want):
        torch.testing.assert_close(got[n], w, rtol=1e-10, atol=1e-12)
    # their model leaves the loop with the last draw's weights: here the caller's own, which are unchanged
    for n, p in theirs.named_parameters():
        assert torch.equal(p, before[n]), n
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in before.items())
    initial = ours(plain, data, 1 - density, rounds=T, rounds_select="kthvalue")
    assert any(not torch.equal(got[n], initial[n]) for n in names)
    assert got.diagnostics["final_weights"] == "last_draw"


def test_the_round_rule_is_synaptic_flows_global_mask() -> None:
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(30, generator=g), torch.rand(4, 5, generator=g)]
    scores[0][:12] = 0.0  # ties at the threshold: all pruned
    scores[1][0, :3] = 0.5
    for density in (0.9, 0.6, 0.35, 0.99, 0.999):
        masks = [torch.ones_like(s) for s in scores]
        global_mask(list(zip(masks, scores)), scores, density)
        flat = torch.cat([s.reshape(-1) for s in scores])
        assert torch.equal(round_mask(flat, 1 - density, "kthvalue"),
                           torch.cat([m.reshape(-1) for m in masks]).bool()), density
    flat = torch.cat([s.reshape(-1) for s in scores])
    assert int(round_mask(flat, 0.2, "kthvalue").sum()) == 50 - 12  # 10 to prune, but 12 zeros tie at 0
    assert bool(round_mask(flat, 0.01, "kthvalue").all())  # int(0.5) = 0: nothing pruned


# ------------------------------------------------------------------------------------ counts, seeds, the model
@pytest.mark.parametrize("schedule", ["exponential", "linear"])
@pytest.mark.parametrize("sparsity", [0.5, 0.93])
def test_the_public_api_gives_the_exact_final_count(schedule: str, sparsity: float) -> None:
    model, data = network(), loader()
    scores = compressors.build("ntk_sap", rounds=3, schedule=schedule, seed=0).score(model, data, None,
                                                                                      sparsity=sparsity)
    names = prunable_names(model)
    assert list(scores) == names  # the classifier is not pruned by default
    total = sum(model.get_parameter(n).numel() for n in names)
    masks = compressors.select(scores, sparsity=sparsity, scope="global")
    assert sum(int(m.sum()) for m in masks.values()) == kept_count(total, sparsity)
    floor = select(scores, sparsity, "global", kept="floor")
    assert sum(int(m.sum()) for m in floor.values()) == kept_count(total, sparsity, "floor")


def test_seeds_reproduce_and_the_global_rng_is_left_alone() -> None:
    model, data = network(), loader()
    state = torch.get_rng_state()
    a, b, c = (ours(model, data, 0.8, rounds=2, seed=s) for s in (5, 5, 6))
    assert torch.equal(torch.get_rng_state(), state)  # the re-sampling forks the global RNG
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    torch.manual_seed(11)  # seed null: drawn from the global RNG, which the pipeline seeds from the run seed
    d = ours(model, data, 0.8, rounds=2, seed=None)
    torch.manual_seed(11)
    e = ours(model, data, 0.8, rounds=2, seed=None)
    assert all(torch.equal(d[n], e[n]) for n in d)


def test_data_free_only_the_batch_shapes_count() -> None:
    model = network()
    a = ours(model, loader(seed=1), 0.8, rounds=2)
    b = ours(model, loader(seed=2), 0.8, rounds=2)
    c = ours(model, loader(sizes=(4, 4)), 0.8, rounds=2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    with pytest.raises(ValueError, match="input shape"):
        compressors.build("ntk_sap").score(model, None, None, sparsity=0.5)


def test_the_callers_model_is_never_modified() -> None:
    """compute itself (not only the base class's restore) leaves the model alone: weights, BN statistics and
    momentum, modes."""
    model, data = network(), loader()
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(0.3)
    before = copy.deepcopy(model.state_dict())
    crit = compressors.build("ntk_sap", rounds=2, seed=0, final_weights="last_draw")
    crit.compute(model, prunable_names(model), data, None, 0.8)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("bad,field", [({"rounds": 0}, "rounds"), ({"epsilon": 0.0}, "epsilon"),
                                       ({"resamples": 0}, "resamples"), ({"schedule": "expinv"}, "schedule"),
                                       ({"rounds_select": "floor"}, "rounds_select"),
                                       ({"final_weights": "last"}, "final_weights"), ({"seed": -1}, "seed")])
def test_options_are_validated_naming_the_field(bad: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        compressors.build("ntk_sap", **bad)


# ----------------------------------------------------------------------------------------- from JSON, digits
def test_runs_from_json_through_the_pipeline(make_config, tmp_path: Path) -> None:
    from launch.runner import run_config

    cfg = make_config("ntk_sap", **{"training.num_steps": 1, "training.compressor.class": "ntk_sap",
                                    "training.compressor.sparsity": 0.9,
                                    "training.compressor.options": {"rounds": 3, "resamples": 2}})
    outcome = run_config(cfg, results=tmp_path / "results", log=lambda s: None)
    assert outcome.status == "completed", outcome.reason
    results = json.loads((Path(outcome.run_dir) / "results.json").read_text())
    assert results["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    diag = results["criterion_diagnostics"]
    assert diag["rounds"] == 3 and diag["rounds_done"] == 3 and diag["draws_per_round"] == 2 * 5
