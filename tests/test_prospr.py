"""ProsPr against the authors' procedure (github.com/mil-ad/prospr, prospr/prospr.py: ``prune``,
``functional_sgd``, ``compute_meta_grads``, ``fwd_with_external_params``; prospr/utils.py:
``attach_masks_as_parameter``, ``keep_mask_from_scores``), written below as they do it: masks attached to the
modules as parameters, forwards monkey-patched to take the fast weights, plain ``torch.autograd.grad`` loops
with ``create_graph``; then the options, seeds, a digits run from JSON and the public API."""

from __future__ import annotations

import copy
import json
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from naive import LOSS, mask_batches, small_cnn
from torch import nn

import compressors
from compressors import prunable_names, select
from utils.schema import ConfigError


# ------------------------------------------------------------------ the authors' procedure, as they code it
def authors_sgd(params, grads, state, lr, momentum=0.0, weight_decay=0.0, detach_first=True):
    """prospr.functional_sgd (dampening 0, no Nesterov); ``detach_first=False`` is the only change made for
    the exact full derivative with momentum."""
    new_params, new_state = [], []
    for i, p in enumerate(params):
        g = grads[i]
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        if momentum != 0:
            buf = state[i]
            buf = (torch.clone(g).detach() if detach_first else g) if buf is None else buf.mul(momentum).add(g)
            new_state.append(buf)
            g = buf
        new_params.append(p.add(g, alpha=-lr))
    return new_params, new_state


def patched_forward(module, weight, bias):
    """The forwards of prospr.fwd_with_external_params: Conv2d / Linear / BatchNorm2d with the given tensors."""
    if isinstance(module, nn.Conv2d):
        return lambda self, x: F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
    if isinstance(module, nn.Linear):
        return lambda self, x: F.linear(x, weight, bias)
    if isinstance(module, nn.BatchNorm2d):
        def bn(self, x):
            factor = 0.0 if self.momentum is None else self.momentum
            if self.training and self.track_running_stats:
                self.num_batches_tracked = self.num_batches_tracked + 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            use_batch = self.training or (self.running_mean is None and self.running_var is None)
            track = not self.training or self.track_running_stats
            return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                                weight, bias, use_batch, factor, self.eps)
        return bn
    raise TypeError(type(module))


def forward_with(net, x, names, fast):
    """Run ``net`` with the fast parameters in place of its own (the authors' monkey-patching)."""
    owners: dict[nn.Module, dict] = {}
    for n, p in zip(names, fast):
        module = net.get_submodule(n.rsplit(".", 1)[0])
        owners.setdefault(module, {"old": module.forward})[n.rsplit(".", 1)[1]] = p
    for module, ps in owners.items():
        module.forward = types.MethodType(patched_forward(module, ps["weight"], ps.get("bias")), module)
    try:
        return net(x)
    finally:
        for module, ps in owners.items():
            module.forward = ps["old"]


def authors_prospr(net, loader, num_steps, inner_lr, inner_momentum, method="full", new_data_in_inner=False,
                   *, weight_decay=0.0, detach_first=True, train=True):
    """prospr.prune(..., return_scores=True): the masks of every Conv2d and Linear weight (the unstructured
    filter_fn), returned as ``{weight name: |meta-gradient|}``."""
    net = copy.deepcopy(net)
    net.train(train)
    names = [n for n, _ in net.named_parameters()]
    detailed = [(n, net.get_submodule(n.rsplit(".", 1)[0]), p) for n, p in net.named_parameters()]
    masked = []
    for name, layer in net.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layer.weight_mask = nn.Parameter(torch.ones_like(layer.weight))
            masked.append(f"{name}.weight")
    masks = [net.get_submodule(n.rsplit(".", 1)[0]).weight_mask for n in masked]
    fast = [p * m.weight_mask if n.endswith(".weight") and hasattr(m, "weight_mask") else p.clone()
            for n, m, p in detailed]
    state = [None] * len(fast)
    batches = iter(loader)
    x, y = next(batches)
    for _ in range(num_steps):
        loss = F.cross_entropy(forward_with(net, x, names, fast), y)
        grads = torch.autograd.grad(loss, fast, create_graph=method != "first_order")
        fast, state = authors_sgd(fast, grads, state, inner_lr, inner_momentum, weight_decay, detach_first)
        if new_data_in_inner:
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
    loss = F.cross_entropy(forward_with(net, x, names, fast), y)
    if method == "full":
        meta = torch.autograd.grad(loss, masks)
    else:  # compute_meta_grads: the gradient at θ_M pushed through θ_0 = c ⊙ θ_init by hand
        grads_fo = torch.autograd.grad(loss, fast)
        meta = [torch.autograd.grad(fp, m.weight_mask, g)[0] for g, fp, (n, m, _) in zip(grads_fo, fast, detailed)
                if n.endswith(".weight") and hasattr(m, "weight_mask")]
    return {n: g.abs() for n, g in zip(masked, meta)}


def authors_keep_masks(scores, prune_ratio):
    """prospr.utils.keep_mask_from_scores: ceil(n · keep) weights by torch.topk over the concatenation."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = torch.zeros_like(flat)
    keep[torch.topk(flat, math.ceil(len(flat) * (1 - prune_ratio))).indices] = 1.0
    return dict(zip(scores, keep.split([s.numel() for s in scores.values()])))


# ----------------------------------------------------------------------------------------------- helpers
def setup(sizes=(6, 6, 6), dtype=torch.float64):
    model = small_cnn().to(dtype)
    batches = [(x.to(dtype), y) for x, y in mask_batches(sizes)]
    return model, batches, prunable_names(model, include_classifier=True)


def ours(model, batches, names, **options):
    return compressors.build("prospr", **options).score(model, batches, LOSS, params=names)


def assert_scores_close(a, b, rtol=1e-7, atol=1e-12):
    """Close elementwise: ``rtol`` of each entry, plus ``atol`` of the tensor's largest entry."""
    assert list(a) == list(b)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=rtol, atol=atol * float(b[n].abs().max()),
                                   msg=lambda m, n=n: f"{n}: {m}")


# ------------------------------------------------------------------------------------ vs the authors' code
CASES = {  # our options -> the authors' prune() arguments
    "cli defaults": ({}, dict(num_steps=3, inner_lr=0.1, inner_momentum=0.0)),
    "new batch per step": ({"same_batch": False}, dict(num_steps=3, inner_lr=0.1, inner_momentum=0.0,
                                                       new_data_in_inner=True)),
    "5 steps, cycling": ({"same_batch": False, "inner_steps": 5},
                         dict(num_steps=5, inner_lr=0.1, inner_momentum=0.0, new_data_in_inner=True)),
    "readme example": ({"inner_lr": 0.5, "momentum": 0.9, "momentum_init": "detached"},
                       dict(num_steps=3, inner_lr=0.5, inner_momentum=0.9)),
    "weight decay": ({"weight_decay": 0.01, "inner_steps": 2}, dict(num_steps=2, inner_lr=0.1, inner_momentum=0.0,
                                                                     weight_decay=0.01)),
    "eval mode": ({"mode": "eval"}, dict(num_steps=3, inner_lr=0.1, inner_momentum=0.0, train=False)),
}


@pytest.mark.parametrize("method", ["full", "first_order"])
@pytest.mark.parametrize("case", list(CASES))
def test_scores_and_masks_equal_the_authors_procedure(case: str, method: str) -> None:
    options, theirs = CASES[case]
    model, batches, names = setup()
    expected = authors_prospr(model, batches, method=method, **theirs)
    got = ours(model, batches, names, meta_grad=method, **options)
    assert_scores_close(dict(got), expected)
    assert len(got.diagnostics["losses"]) == theirs["num_steps"] + 1
    for sparsity in (0.5, 0.75):  # n · (1 - s) integral: the authors' ceil equals our round
        masks = select(got, sparsity, "global")
        want = authors_keep_masks(expected, sparsity)
        assert all(torch.equal(masks[n].to(want[n].dtype), want[n].view_as(masks[n])) for n in names), sparsity


def test_float32_scores_match_the_authors_to_rounding() -> None:
    model, batches, names = setup(dtype=torch.float32)
    for method in ("full", "first_order"):
        expected = authors_prospr(model, batches, 3, 0.1, 0.0, method)
        assert_scores_close(dict(ours(model, batches, names, meta_grad=method)), expected, rtol=1e-4, atol=1e-6)


def test_momentum_init_tracked_is_the_exact_derivative_and_differs_from_the_authors() -> None:
    model, batches, names = setup()
    args = dict(num_steps=3, inner_lr=0.5, inner_momentum=0.9)
    tracked = ours(model, batches, names, inner_lr=0.5, momentum=0.9)  # momentum_init "tracked" (default)
    assert_scores_close(dict(tracked), authors_prospr(model, batches, detach_first=False, **args))
    detached = authors_prospr(model, batches, **args)
    assert not torch.allclose(tracked[names[0]], detached[names[0]], rtol=1e-3)
    # first order: nothing to detach, both are the same
    fo = ours(model, batches, names, inner_lr=0.5, momentum=0.9, meta_grad="first_order")
    assert_scores_close(dict(fo), authors_prospr(model, batches, method="first_order", **args))


def test_first_order_differs_from_full_and_is_grad_at_theta_m_times_theta_init() -> None:
    model, batches, names = setup()
    full, fo = ours(model, batches, names), ours(model, batches, names, meta_grad="first_order")
    for n in names:
        assert not torch.allclose(full[n], fo[n], rtol=1e-2)
    assert not all(torch.equal(a, b) for a, b in zip(select(full, 0.75).values(), select(fo, 0.75).values()))
    # M = 0 steps is not allowed; with one step at a vanishing rate both tend to SNIP's |θ ⊙ g|
    params = dict(model.named_parameters())
    x, y = batches[0]
    m = copy.deepcopy(model).train()
    g = torch.autograd.grad(LOSS(m(x), y), [dict(m.named_parameters())[n] for n in names])
    snip = {n: (params[n].detach() * gi).abs() for n, gi in zip(names, g)}
    for meta_grad in ("full", "first_order"):
        tiny = ours(model, batches, names, inner_steps=1, inner_lr=1e-9, meta_grad=meta_grad)
        assert_scores_close(dict(tiny), snip, rtol=1e-6, atol=1e-8)


def test_default_scored_set_gives_the_authors_scores_on_its_layers() -> None:
    """The classifier is not pruned by default here (the authors mask it): the other layers' meta-gradients
    do not depend on that, since c = 1 leaves the network unchanged."""
    model, batches, _ = setup()
    default = compressors.build("prospr").score(model, batches, LOSS)
    assert list(default) == prunable_names(model) == ["0.weight", "3.weight", "7.weight"]
    theirs = authors_prospr(model, batches, 3, 0.1, 0.0)
    assert_scores_close(dict(default), {n: theirs[n] for n in default})


def test_model_left_untouched_and_scores_reproducible_from_the_seed() -> None:
    model, batches, names = setup(dtype=torch.float32)
    before = copy.deepcopy(model.state_dict())
    model.eval()
    a = ours(model, batches, names, same_batch=False)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics too
    b = ours(model, batches, names, same_batch=False)
    assert all(torch.equal(a[n], b[n]) for n in names)
    other = copy.deepcopy(model)
    torch.manual_seed(1)  # another initialisation of the same architecture: another mask
    for m in other.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    c = ours(other, batches, names, same_batch=False)
    assert not all(torch.equal(x, y) for x, y in zip(select(a, 0.75).values(), select(c, 0.75).values()))


@pytest.mark.parametrize("bad", [{"inner_steps": 0}, {"inner_lr": 0}, {"momentum": 1.0}, {"weight_decay": -1},
                                 {"meta_grad": "second_order"}, {"mode": "test"}, {"momentum_init": "none"},
                                 {"same_batch": "maybe"}, {"chunk_size": 4}])
def test_bad_options_name_the_field(bad: dict) -> None:
    with pytest.raises(ConfigError) as err:
        compressors.build("prospr", **bad)
    assert list(bad)[0] in str(err.value)


def test_defaults_are_the_authors_command_line() -> None:
    """cli.py: --inner-steps 3, --inner-lr 0.1, --inner-momentum 0, --meta-grads-mode full,
    --new-data-in-inner False; functional_sgd is called without weight decay; net.train()."""
    o = compressors.build("prospr").options
    assert (o.inner_steps, o.inner_lr, o.momentum, o.meta_grad, o.same_batch, o.weight_decay, o.mode) == (
        3, 0.1, 0.0, "full", True, 0.0, "train")


# ------------------------------------------------------------------------------------ public API and runs
def test_public_api_on_a_dataloader() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    import models

    torch.manual_seed(0)
    model = models.build("digits_cnn", num_classes=10, input_shape=(1, 8, 8), width=8)
    data = TensorDataset(torch.randn(40, 1, 8, 8), torch.arange(40) % 10)
    loader = DataLoader(data, batch_size=20)
    crit = compressors.build("prospr", inner_steps=2, meta_grad="first_order")
    scores = crit.score(model, loader, nn.CrossEntropyLoss(), sparsity=0.9)
    assert set(scores) == set(prunable_names(model)) and all((s >= 0).all() for s in scores.values())
    masks = compressors.select(scores, sparsity=0.9, scope="global")
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.1 * sum(m.numel() for m in masks.values()))
    assert scores.diagnostics["mask_batches"] == 1 and len(scores.diagnostics["losses"]) == 3


def test_digits_run_from_json(make_config, tmp_path: Path) -> None:
    from launch.runner import run_config
    from utils.io import load_torch

    options = {"inner_steps": 2, "same_batch": False}
    cfg = make_config("prospr", **{"training.num_steps": 1, "training.compressor.class": "prospr",
                                   "training.compressor.options": options})
    run = run_config(cfg, results=tmp_path, log=lambda s: None)
    folder = Path(run.run_dir)
    results = json.loads((folder / "results.json").read_text())
    assert results["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)
    diag = results["criterion_diagnostics"]
    assert len(diag["losses"]) == 3 and all(math.isfinite(v) for v in diag["losses"])
    assert diag["mask_batches"] == 3 and diag["meta_grad"] == "full"
    config = json.loads((folder / "config.json").read_text())
    assert config["training"]["compressor"]["options"]["inner_steps"] == 2
    mask = load_torch(folder / "mask.pt")
    assert 0.15 < sum(float(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values()) < 0.25


def test_a_bad_option_in_a_config_names_its_path(make_config) -> None:
    from runspec import RunSpec

    path = make_config(**{"training.compressor.class": "prospr",
                          "training.compressor.options": {"inner_steps": 0, "meta_grad": "exact"}})
    with pytest.raises(ConfigError) as err:
        RunSpec.load(path)
    paths = {p.path for p in err.value.problems}
    assert {"training.compressor.options.inner_steps", "training.compressor.options.meta_grad"} <= paths
