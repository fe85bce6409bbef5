"""Shared estimators against the naive reference loops of ``naive``: every route, chunking with a smaller
last batch, Hutchinson against the exact Hessian diagonal (error within Monte-Carlo bounds)."""

from __future__ import annotations

import pytest
import torch
from naive import LOSS, mask_batches, naive_batch_grads, naive_hutchinson, small_cnn
from torch import nn

from compressors import estimators as E
from compressors import prunable_names


def assert_close_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-4,
                       atol: float = 1e-7) -> None:
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=rtol, atol=atol, msg=lambda m, n=n: f"{n}: {m}")


def test_chunk_batches_groups_consecutive_batches() -> None:
    assert E.chunk_batches([1] * 5, 2) == [[0, 1], [2, 3], [4]]
    assert E.chunk_batches([3, 3, 2], 100) == [[0, 1, 2]]
    assert E.chunk_batches([3, 3, 2], 100, equal_sizes=True) == [[0, 1], [2]]
    assert E.chunk_batches([5, 5], 3) == [[0], [1]]  # a batch larger than a chunk is never split


@pytest.mark.parametrize("chunk_size", [5, 128])  # 5: a chunk mixing a size-3 and the size-2 batch
@pytest.mark.parametrize("T", [1.0, 200.0])
def test_summed_gradient_and_hvp_equal_the_per_batch_loop(chunk_size: int, T: float) -> None:
    model = small_cnn()
    names = prunable_names(model, include_classifier=True, include_biases=True)
    batches = mask_batches()
    ref = naive_batch_grads(model, names, batches, T)
    summed = {n: sum(r[n] for r in ref) for n in names}
    assert_close_dicts(E.summed_gradient(model, names, batches, LOSS, temperature=T, chunk_size=chunk_size), summed)
    assert_close_dicts(E.mean_gradient(model, names, batches, LOSS, temperature=T, chunk_size=chunk_size),
          {n: v / len(batches) for n, v in summed.items()})
    # H v of the summed loss, per batch with create_graph (the reference GraSP loop)
    params = dict(model.named_parameters())
    v = {n: torch.randn_like(params[n]) for n in names}
    hv = {n: torch.zeros_like(params[n]) for n in names}
    for x, y in batches:
        grads = torch.autograd.grad(LOSS(model(x) / T, y), [params[n] for n in names], create_graph=True)
        hvb = torch.autograd.grad(sum((g * v[n]).sum() for g, n in zip(grads, names)), [params[n] for n in names])
        for n, h in zip(names, hvb):
            hv[n] += h
    scale = max(float(t.abs().max()) for t in hv.values())
    got = E.hessian_vector_product(model, names, batches, LOSS, v, temperature=T, chunk_size=chunk_size)
    assert_close_dicts(got, hv, atol=1e-5 * scale)


@pytest.mark.parametrize("route", ["loop", "hooks", "vmap"])
@pytest.mark.parametrize("sizes", [(1, 1, 1, 1, 1), (3, 3, 2)])
def test_fisher_diagonal_every_route_equals_the_loop(route: str, sizes: tuple[int, ...]) -> None:
    model = small_cnn()
    names = prunable_names(model, include_classifier=True)
    batches = mask_batches(sizes)
    ref = naive_batch_grads(model, names, batches)
    B = len(batches)
    fisher = {n: sum(r[n] ** 2 for r in ref) / B for n in names}
    mean = {n: sum(r[n] for r in ref) / B for n in names}
    res = E.fisher_diagonal(model, names, batches, LOSS, chunk_size=4, route=route)
    assert_close_dicts(res.fisher, fisher)
    assert_close_dicts(res.mean_grad, mean)
    # per_batch_gradients itself, row by row, in loader order
    rows = [r for chunk in E.per_batch_gradients(model, names, batches, LOSS, chunk_size=4, route=route)
            for r in (dict(zip(chunk, vals)) for vals in zip(*chunk.values()))]
    assert len(rows) == B
    for got, want in zip(rows, ref):
        assert_close_dicts(got, want)


def test_hooks_route_falls_back_for_unsupported_parameters() -> None:
    model = small_cnn()
    names = prunable_names(model, include_biases=True)  # biases are not handled by the hooks route
    batches = mask_batches((2, 2))
    ref = naive_batch_grads(model, names, batches)
    res = E.fisher_diagonal(model, names, batches, LOSS, route="hooks")
    assert_close_dicts(res.fisher, {n: (ref[0][n] ** 2 + ref[1][n] ** 2) / 2 for n in names})


@pytest.mark.parametrize("route", ["loop", "probes", "vmap"])
def test_hutchinson_equals_the_naive_loop_with_the_same_probes(route: str) -> None:
    model = small_cnn()
    names = prunable_names(model)
    batches = mask_batches((2, 2, 1))
    diag, se = naive_hutchinson(model, names, batches, probes=3, seed=7, T=2.0)
    res = E.hutchinson_diagonal(model, names, batches, LOSS, probes=3, generator=torch.Generator().manual_seed(7),
                                temperature=2.0, chunk_size=4, route=route)
    scale = max(float(t.abs().max()) for t in diag.values())
    assert_close_dicts(res.diag, diag, atol=1e-5 * scale)
    assert_close_dicts(res.stderr, se, rtol=1e-3, atol=1e-5 * scale)
    ref = naive_batch_grads(model, names, batches, T=2.0)
    assert_close_dicts(res.mean_grad, {n: sum(r[n] for r in ref) / len(batches) for n in names})
    assert res.samples == 9
    diagnostics = res.diagnostics()
    assert set(diagnostics) == set(names)
    for n in names:
        assert diagnostics[n]["mean_abs_diag"] == pytest.approx(float(diag[n].abs().mean()), rel=1e-3)
        assert diagnostics[n]["mean_stderr"] == pytest.approx(float(se[n].mean()), rel=1e-3)


def _tiny() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Tanh(), nn.Linear(5, 3, bias=False))
    g = torch.Generator().manual_seed(4)
    return net, [(torch.randn(2, 4, generator=g), torch.randint(0, 3, (2,), generator=g)) for _ in range(3)]


def exact_hessians(model: nn.Module, names: list[str], batches) -> list[torch.Tensor]:
    """Full Hessian of each batch loss over the flattened named parameters, row by row with autograd."""
    params = dict(model.named_parameters())
    out = []
    for x, y in batches:
        grads = torch.autograd.grad(LOSS(model(x), y), [params[n] for n in names], create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        rows = [torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat[i], [params[n] for n in names],
                                                                       retain_graph=True)])
                for i in range(flat.numel())]
        out.append(torch.stack(rows).double())
    return out


def test_hutchinson_converges_to_the_exact_hessian_diagonal_within_monte_carlo_bounds() -> None:
    model, batches = _tiny()
    names = [n for n, _ in model.named_parameters()]
    H = exact_hessians(model, names, batches)
    B = len(batches)
    exact = sum(torch.diagonal(h) for h in H) / B
    # Var(z_i (Hz)_i) = sum_{j != i} H_ij^2 for Rademacher z, so E||H_hat - diag||^2 = sum_b sum_i
    # sum_{j != i} H_b,ij^2 / (B^2 K)
    offdiag = sum(float((h ** 2).sum() - (torch.diagonal(h) ** 2).sum()) for h in H) / B ** 2
    assert offdiag > 0
    errors = {}
    for K in (4, 64, 1024):
        res = E.hutchinson_diagonal(model, names, batches, LOSS, probes=K, generator=torch.Generator().manual_seed(K))
        est = torch.cat([res.diag[n].reshape(-1) for n in names]).double()
        errors[K] = float(((est - exact) ** 2).sum())
        expected = offdiag / K
        assert errors[K] < 6 * expected, (K, errors[K], expected)  # P(chi-square-like > 6x mean) is tiny
        # the reported standard errors match the Monte-Carlo spread
        se2 = float(sum((res.stderr[n].double() ** 2).sum() for n in names))
        assert 0.5 * expected < se2 < 2.0 * expected, (K, se2, expected)
    assert errors[1024] < errors[64] < errors[4]


def test_auto_route_per_device() -> None:
    assert E.default_route(torch.device("cpu"), "grad") == "loop"
    assert E.default_route(torch.device("cpu"), "hessian", 50_000) == "probes"
    assert E.default_route(torch.device("cpu"), "hessian", 11_000_000) == "loop"
    assert E.default_route(torch.device("cuda"), "grad") == E.default_route(torch.device("cuda"), "hessian") == "vmap"
    with pytest.raises(ValueError):
        E.fisher_diagonal(small_cnn(), ["0.weight"], mask_batches(), LOSS, route="nope")


class _ViewNet(nn.Module):
    """Flattens a feature map with ``.view``, which a channels-last input cannot take."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


@pytest.mark.parametrize("make", [small_cnn, _ViewNet])
def test_large_cpu_passes_use_channels_last_with_a_fallback(make) -> None:
    """A pass of >= CHANNELS_LAST_MIN_SAMPLES images runs channels-last on the CPU; a model whose forward
    rejects that layout is remembered and run in the plain one.  Both give the loop's gradients."""
    torch.manual_seed(0)
    model = make()
    names = prunable_names(model, include_classifier=True)
    batches = mask_batches((E.CHANNELS_LAST_MIN_SAMPLES + 4,) + (1,) * 3)
    ref = naive_batch_grads(model, names, batches)
    got = E.summed_gradient(model, names, batches, LOSS, chunk_size=1000)
    assert_close_dicts(got, {n: sum(r[n] for r in ref) for n in names}, atol=1e-6)
    assert (model in E._NCHW_ONLY) == (make is _ViewNet)
