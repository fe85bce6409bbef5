"""Scoring speed and memory: our criteria vs naive per-batch loops written like the reference code.

    python benchmarks/scoring.py            # ResNet18 (CIFAR variant), 100 CIFAR-shaped mask samples,
                                            # batch 1, every data-dependent criterion + synflow
    python benchmarks/scoring.py --quick    # a small CNN and 10 samples: a smoke run in seconds
    python benchmarks/scoring.py --tables cost    # only the cost table: every criterion, counted passes

Prints, per criterion, the time of ``compressors.build(name).score(...)``, the time of a naive loop in the
same process written like the reference code (one ``backward`` per mask batch with every parameter
requiring grad; SNIP and GraSP accumulate in ``.grad``, grad_norm/Fisher/FTS add the gradient or its square
per batch; GraSP's H g per batch with ``create_graph``; for Hutchinson K separate Hessian-vector products
per batch, a separate gradient pass for HTS, probes drawn per tensor with ``randint``; for SynFlow a
per-round in-place loop with a kthvalue threshold), their ratio, the largest deviation of our scores from
the loop's (relative to the scores' scale; for Hutchinson from a loop given our probes, on 2 samples), and
the peak memory of each (CUDA: peak allocated; CPU: peak RSS growth over the call, sampled every 2 ms).
Each side runs ``--repeats`` times, interleaved, and the fastest run counts (timings on a shared machine
are noisy).  A float32 loop over 100 samples is itself ~5e-4 (relative) away from a float64 one on
grad_norm, so deviations of that size are rounding, not a different estimator.

Then the estimator table: for hutch_diag and fisher_diag at mask batch sizes 1, 10 and 100 (of the same
samples), the time and the relative L2 error against a reference -- for Fisher the exact per-sample
estimator (batch 1), for Hutchinson the same estimator with many probes (its expectation, diag of the mean
Hessian, does not depend on the batch size; only its variance does) -- and the fraction of the reference's
kept weights that the estimate also keeps at 90% sparsity (what matters for the mask).

Then the cost table (``--tables cost``): every registered pruning criterion (``compressors.pruning_criteria()``)
scores the same model on one mask batch (``--cost-samples``, default 100 CIFAR-shaped samples, 10 per class).
Per criterion: the time of ``compressors.build(name).score(...)``; its forward and backward passes as counted
by hooks on the model's first module (:class:`PassCounter`: a forward pre-hook counts its calls, a tensor hook
on its output counts the backward traversals that reach it, double backwards included), grouped by input
(shape, dtype, train/eval mode), next to the number the criterion's docs state (:data:`DOCUMENTED`); the pass
floor, one batched forward + backward of the same input measured right after the criterion in the same run
(:func:`pass_floor`); and the ratio time / (counted passes x floor).  Multi-round criteria (those with a
``rounds`` option) run ``--cost-rounds`` rounds (default 10: their defaults of 60-100 rounds take minutes each
on a 2-core CPU; the table says so), and a ratio above :data:`COST_GOAL` (1.25) is flagged.  PHEW makes no pass;
its vectorised walks are timed against the authors' Python loops by benchmarks/phew.py.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compressors  # noqa: E402
import models  # noqa: E402
from autosparse.predictor import build_mlp, make_settings, save_predictor  # noqa: E402
from compressors.base import preserved_state  # noqa: E402
from compressors.estimators import RademacherProbes, default_route  # noqa: E402

Batches = list[tuple[torch.Tensor, torch.Tensor]]


# ------------------------------------------------------------------------------------ measurement
def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """(result, seconds, peak memory in MiB above the level at the start)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        tic = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        secs = time.perf_counter() - tic
        return out, secs, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    base = _rss()
    peak = [base]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    tic = time.perf_counter()
    try:
        out = fn()
    finally:
        secs = time.perf_counter() - tic
        done.set()
        thread.join()
    return out, secs, (max(peak[0], _rss()) - base) / 2**20


# ------------------------------------------------------------------------------- naive references
LOSS = nn.CrossEntropyLoss()


def _params(model: nn.Module, names: list[str]) -> list[torch.Tensor]:
    p = dict(model.named_parameters())
    return [p[n] for n in names]


def naive_grads(model: nn.Module, names: list[str], batches: Batches, T: float = 1.0, *,
                square: bool = True, mean: bool = True) -> tuple[dict, dict]:
    """(sum_b g_b, sum_b g_b^2) like the reference grad_mean / fisher_diag / fd_taylor loops: per batch
    ``zero_grad``, forward, ``backward`` (every parameter requires grad), then ``+=`` of the gradient
    and/or its square for every parameter."""
    model.eval()
    params = dict(model.named_parameters())
    s = {n: torch.zeros_like(p) for n, p in params.items()} if mean else {}
    sq = {n: torch.zeros_like(p) for n, p in params.items()} if square else {}
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        LOSS(model(x) / T, y).backward()
        for n, p in params.items():
            if p.grad is not None:
                if mean:
                    s[n] += p.grad.detach()
                if square:
                    sq[n] += torch.square(p.grad.detach())
    model.zero_grad(set_to_none=True)
    return {n: v for n, v in s.items() if n in names}, {n: v for n, v in sq.items() if n in names}


def naive_accumulated_grad(model: nn.Module, names: list[str], batches: Batches, T: float = 1.0) -> dict:
    """sum_b g_b like the reference SNIP / GraSP first pass: ``backward`` per batch, accumulating in .grad."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        LOSS(model(x) / T, y).backward()
    params = dict(model.named_parameters())
    out = {n: params[n].grad.detach().clone() for n in names}
    model.zero_grad(set_to_none=True)
    return out


def naive_grasp(model: nn.Module, names: list[str], batches: Batches, T: float = 200.0) -> dict:
    """The reference GraSP loop (two passes over the mask batches), with g and H taken over W (the issue's
    definition) rather than over every parameter."""
    model.eval()
    W = compressors.prunable_names(model, include_classifier=True)
    ps = _params(model, W)
    g = naive_accumulated_grad(model, W, batches, T)
    hg = [torch.zeros_like(p) for p in ps]
    for x, y in batches:
        grads = torch.autograd.grad(LOSS(model(x) / T, y), ps, create_graph=True)
        z = sum((gr * g[n]).sum() for gr, n in zip(grads, W))
        for acc, h in zip(hg, torch.autograd.grad(z, ps)):
            acc += h
    S = {n: -p.detach() * h for n, p, h in zip(W, ps, hg)}
    norm = abs(sum(s.sum() for s in S.values()))
    return {n: -S[n] / norm for n in names}


def per_tensor_probes(ps: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """One Rademacher tensor per parameter, ``randint(0, 2) * 2 - 1`` (the reference draws
    ``empty_like(p).bernoulli_(0.5) * 2 - 1``, which is ~2.7x slower still on this CPU)."""
    return [torch.randint(0, 2, p.shape, generator=gen, device=p.device, dtype=p.dtype) * 2 - 1 for p in ps]


def stream_probes(ps: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """The probes our estimator draws (:class:`compressors.estimators.RademacherProbes`), for the deviation
    check (a fresh stream object per call continues the same generator)."""
    stream = RademacherProbes([p.shape for p in ps], gen, ps[0].device, ps[0].dtype)
    return [z.clone() for z in stream.split(stream.draw(1)[0])]


def naive_hutchinson(model: nn.Module, names: list[str], batches: Batches, K: int, seed: int,
                     T: float = 200.0, draw: Callable = per_tensor_probes,
                     mean_grad: bool = False) -> tuple[dict, dict]:
    """(H_hat, mean gradient) like the reference hutchinson_diag: per batch one gradient with
    create_graph, then K separate HVPs, ``hdiag += z * Hz``.  The mean gradient (HTS) comes, as in the
    reference hutchinson_taylor, from a separate gradient pass."""
    model.eval()
    ps = _params(model, names)
    gen = torch.Generator(device=ps[0].device).manual_seed(seed)
    acc = [torch.zeros_like(p) for p in ps]
    for x, y in batches:
        grads = torch.autograd.grad(LOSS(model(x) / T, y), ps, create_graph=True)
        for k in range(K):
            z = draw(ps, gen)
            hz = torch.autograd.grad(grads, ps, grad_outputs=z, retain_graph=k < K - 1)
            for a, zi, h in zip(acc, z, hz):
                a.add_((zi * h).detach())
    M = len(batches) * K
    g = {}
    if mean_grad:
        s, _ = naive_grads(model, names, batches, T, square=False)
        g = {n: v / len(batches) for n, v in s.items()}
    return {n: a / M for n, a in zip(names, acc)}, g


def naive_synflow(model: nn.Module, names: list[str], shape: tuple[int, ...], sparsity: float, rounds: int) -> dict:
    """Per round: abs() all parameters and buffers in place, apply the mask, forward ones, backward,
    kthvalue threshold (as in public code, with the keep-fraction schedule); restore at the end."""
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ps = _params(model, names)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.abs_()
    pos = [p.detach().clone() for p in ps]
    masks = [torch.ones_like(p) for p in ps]
    x = torch.ones((1, *shape), device=ps[0].device)
    scores: list[torch.Tensor] = []
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for p, w, m in zip(ps, pos, masks):
                p.copy_(w * m)
        model.zero_grad()
        model(x).sum().backward()
        scores = [(p.grad * p).detach().abs() for p in ps]
        flat = torch.cat([s.flatten() for s in scores])
        keep = (1 - sparsity) ** (k / rounds)
        kth = max(1, flat.numel() - int(round(keep * flat.numel())))
        threshold = torch.kthvalue(flat.cpu(), kth).values.to(flat.device)
        masks = [(s > threshold).float() for s in scores]
    model.load_state_dict(state)
    return dict(zip(names, scores))


# --------------------------------------------------------------------------------------- the tables
def deviation(ours: dict, ref: dict) -> float:
    """max |ours - ref| / max |ref| over all tensors."""
    num = max(float((ours[n].double() - ref[n].double()).abs().max()) for n in ref)
    den = max(float(ref[n].abs().max()) for n in ref) or 1.0
    return num / den


def rel_l2(est: dict, ref: dict) -> float:
    num = sum(float(((est[n].double() - ref[n].double()) ** 2).sum()) for n in ref)
    den = sum(float((ref[n].double() ** 2).sum()) for n in ref)
    return (num / den) ** 0.5 if den else float("nan")


def kept_overlap(est: dict, ref: dict, sparsity: float = 0.9) -> float:
    """Fraction of the reference mask's kept weights also kept by ``est`` (global top-k at ``sparsity``)."""
    a, b = compressors.select(est, sparsity), compressors.select(ref, sparsity)
    both = sum(float((a[n] * b[n]).sum()) for n in ref)
    return both / max(sum(float(b[n].sum()) for n in ref), 1.0)


def make_data(n: int, classes: int, shape: tuple[int, ...], device: torch.device, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.arange(n) % classes  # n / classes samples per class
    return x.to(device), y.to(device)


def split(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Batches:
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


HUTCHINSON = ("hutch_diag", "hutch_pruning", "hts")
NAIVE = ("grad_norm", "snip", "grasp", "fisher_diag", "fisher_pruner", "fts", *HUTCHINSON, "synflow")


def reference_scores(name: str, model: nn.Module, names: list[str], data: Batches, probes: int, rounds: int,
                     shape: tuple[int, ...], draw: Callable = per_tensor_probes) -> dict:
    """The naive loop's scores for one criterion (model restored afterwards)."""
    params = dict(model.named_parameters())
    th = {n: params[n].detach() for n in names}
    B = len(data)
    with preserved_state(model):
        for p in model.parameters():  # as in the reference code, every parameter requires grad
            p.requires_grad_(True)
        if name == "grad_norm":
            s, _ = naive_grads(model, names, data, square=False)
            return {n: (s[n] / B).abs() for n in names}
        if name == "snip":
            s = naive_accumulated_grad(model, names, data)
            raw = {n: (th[n] * s[n]).abs() for n in names}
            tot = sum(v.sum() for v in raw.values())
            return {n: v / tot for n, v in raw.items()}
        if name == "fisher_diag":
            _, sq = naive_grads(model, names, data, mean=False)
            return {n: sq[n] / B for n in names}
        if name == "fisher_pruner":
            _, sq = naive_grads(model, names, data, mean=False)
            return {n: 0.5 * th[n] ** 2 * sq[n] / B for n in names}
        if name == "fts":
            s, sq = naive_grads(model, names, data)
            return {n: (th[n] * s[n] / B + 0.5 * th[n] ** 2 * sq[n] / B).abs() for n in names}
        if name == "grasp":
            return naive_grasp(model, names, data)
        if name in HUTCHINSON:
            d, g = naive_hutchinson(model, names, data, probes, seed=0, draw=draw, mean_grad=name == "hts")
            if name == "hutch_diag":
                return d
            if name == "hutch_pruning":
                return {n: 0.5 * th[n] ** 2 * d[n] for n in names}
            return {n: (th[n] * g[n] + 0.5 * th[n] ** 2 * d[n]).abs() for n in names}
        if name == "synflow":
            return naive_synflow(model, names, shape, 0.9, rounds)
        raise ValueError(name)


def main_table(model: nn.Module, batches: Batches, shape: tuple[int, ...], criteria: list[str], probes: int,
               rounds: int, hutch_samples: int, device: torch.device, repeats: int = 1,
               hutch_repeats: int = 1) -> list[list[str]]:
    names = compressors.prunable_names(model)
    rows = []
    # warm-up (not timed): PyTorch initialises kernels and allocators lazily on the first passes
    compressors.build("snip").score(model, batches, LOSS)
    for name in criteria:
        data = batches[:hutch_samples] if name in HUTCHINSON else batches
        opts: dict[str, Any] = {}
        if name in HUTCHINSON:
            opts = {"probes": probes, "seed": 0}
        elif name == "synflow":
            opts = {"rounds": rounds}
        crit = compressors.build(name, **opts)
        t_ours = t_ref = math.inf
        m_ours = m_ref = 0.0
        for _ in range(hutch_repeats if name in HUTCHINSON else repeats):  # interleaved
            ours, t, m = measure(lambda: crit.score(model, data, LOSS, sparsity=0.9), device)  # noqa: B023
            t_ours, m_ours = min(t_ours, t), max(m_ours, m)
            ref, t, m = measure(  # the lambdas are called at once, inside this iteration
                lambda: reference_scores(name, model, names, data, probes, rounds, shape), device)  # noqa: B023
            t_ref, m_ref = min(t_ref, t), max(m_ref, m)
        if name == "synflow":  # compare masks: ours must keep exactly round(0.1 N); the loop's kthvalue differs by ties
            a, b = compressors.select(ours, 0.9), compressors.select(ref, 0.9)
            agree = sum(float((a[n] == b[n]).float().sum()) for n in names) / sum(a[n].numel() for n in names)
            dev = f"mask agree {agree:.4f}"
        elif name in HUTCHINSON:  # the same probes on both sides, on 2 samples (not timed)
            few = data[:2]
            mine = compressors.build(name, **opts).score(model, few, LOSS)
            same = reference_scores(name, model, names, few, probes, rounds, shape, stream_probes)
            dev = f"{deviation(mine, same):.1e}"
        else:
            dev = f"{deviation(ours, ref):.1e}"
        rows.append([name, str(len(data)), f"{t_ours:.2f}", f"{t_ref:.2f}", f"{t_ref / t_ours:.2f}x",
                     f"{m_ours:.0f}", f"{m_ref:.0f}", dev])
        print("  " + "  ".join(rows[-1]), flush=True)
    return rows


def estimator_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, probes: int, ref_probes: int,
                    device: torch.device) -> list[list[str]]:
    rows = []
    fisher_ref = None
    for bs in (1, 10, 100):
        if bs > len(x):
            continue
        b = split(x, y, bs)
        f, t, _ = measure(lambda: compressors.build("fisher_diag").score(model, b, LOSS), device)  # noqa: B023
        if fisher_ref is None:
            fisher_ref = f
        rows.append(["fisher_diag", str(bs), str(len(b)), "-", f"{t:.2f}", f"{rel_l2(f, fisher_ref):.3f}",
                     f"{kept_overlap(f, fisher_ref):.3f}"])
        print("  " + "  ".join(rows[-1]), flush=True)
    # Hutchinson reference: many probes on one batch of all samples (same expectation at every batch size)
    href = compressors.build("hutch_diag", probes=ref_probes, seed=123).score(model, split(x, y, len(x)), LOSS)
    for bs in (1, 10, 100):
        if bs > len(x):
            continue
        b = split(x, y, bs)
        h, t, _ = measure(lambda: compressors.build("hutch_diag", probes=probes, seed=0).score(model, b, LOSS),  # noqa: B023
                          device)
        rows.append(["hutch_diag", str(bs), str(len(b)), str(probes), f"{t:.2f}", f"{rel_l2(h, href):.3f}",
                     f"{kept_overlap(h, href):.3f}"])
        print("  " + "  ".join(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------------- criterion options
def has_option(name: str, option_name: str) -> bool:
    """Does criterion ``name``'s Options class have a field ``option_name``?"""
    options = compressors.get(name).Options
    return dataclasses.is_dataclass(options) and option_name in {f.name for f in dataclasses.fields(options)}


def criterion_options(name: str, probes: int, rounds: int, predictor: Path) -> dict[str, Any]:
    """The options a benchmark builds criterion ``name`` with, chosen by the fields its Options class has:
    ``probes`` (Hutchinson) and ``rounds`` (every multi-round criterion) as given, ``seed`` 0 for every
    stochastic criterion, ``predictor`` (AutoSparse) the given file; every other option keeps its default."""
    given = {"probes": probes, "rounds": rounds, "seed": 0, "predictor": str(predictor)}
    return {k: v for k, v in given.items() if has_option(name, k)}


def write_predictor(folder: Path) -> Path:
    """An AutoSparse predictor with random weights (its scores are timed, never judged)."""
    torch.manual_seed(0)
    path = folder / "predictor.pt"
    save_predictor(path, build_mlp(2, [16]), make_settings("standardized", [16]), {"note": "benchmark: random"})
    return path


# ------------------------------------------------------------------------------------ cost in passes
COST_GOAL = 1.25  # a multi-round criterion should run within this factor of (its passes x the pass floor)
PassKey = tuple[tuple[int, ...], str, bool]  # the input of a pass: (shape, dtype, training mode)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def first_module(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The first module holding parameters that a forward pass of ``x`` runs (the input layer), found by
    running the model once on ``x[:1]`` (eval mode, no grad; the modes are restored)."""
    order: list[nn.Module] = []
    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    handles = [m.register_forward_pre_hook(lambda mod, args: order.append(mod)) for m in owners]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    if not order:
        raise ValueError("the model ran no module with parameters on its input: nothing to count passes at")
    return order[0]


class PassCounter:
    """Counts the passes through ``module`` (the model's first module): a forward pre-hook counts its forward
    calls, and a forward hook registers a tensor hook on every output that requires grad, which counts each
    backward traversal reaching it (``backward``, ``autograd.grad``, and the double backwards of Hessian-vector
    products and meta-gradients alike; one backward of a loss built from two forwards traverses both).  Both
    are grouped by the pass's input: (shape, dtype, training mode).  Hooks fire under ``functional_call`` and
    on ``copy.deepcopy`` copies of the model (the hooks are closures, which a deep copy shares).  Two limits:
    a double backward batched over K vectors (``is_grads_batched``) is one traversal, and inside
    ``torch.func`` transforms the output cannot take a tensor hook (counted in ``unhookable``)."""

    def __init__(self, module: nn.Module) -> None:
        self.forwards: Counter[PassKey] = Counter()
        self.backwards: Counter[PassKey] = Counter()
        self.unhookable = 0
        last: list[PassKey] = []

        def pre(mod: nn.Module, args: tuple) -> None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            key = (tuple(x.shape), str(x.dtype).removeprefix("torch."), mod.training) if x is not None else \
                ((), "?", mod.training)
            last[:] = [key]
            self.forwards[key] += 1

        def post(mod: nn.Module, args: tuple, out: Any) -> None:
            if not (last and torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad):
                return
            key = last[0]

            def count(grad: torch.Tensor) -> None:
                self.backwards[key] += 1

            try:
                out.register_hook(count)
            except RuntimeError:  # a torch.func transform: the traversal cannot be counted
                self.unhookable += 1

        self._handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def reset(self) -> None:
        self.forwards.clear()
        self.backwards.clear()
        self.unhookable = 0

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@dataclasses.dataclass
class Floor:
    """One batched pass of an input: forward and forward + backward seconds, wall clock and CPU time of this
    process (all its threads: on a machine shared with other jobs the CPU time moves less than the wall
    clock)."""

    forward_s: float = math.inf
    forward_backward_s: float = math.inf
    forward_cpu_s: float = math.inf
    forward_backward_cpu_s: float = math.inf


def pass_floor(model: nn.Module, key: PassKey, batch: tuple[torch.Tensor, torch.Tensor], names: list[str],
               repeats: int) -> Floor:
    """One batched forward and forward + backward of ``model`` on an input like ``key``: the mask batch
    itself when the shape is its shape, else a standard normal input (a single all-ones input for SynFlow
    costs the same); the model in the key's mode and dtype (a copy for another dtype); the loss the summed
    cross-entropy of the mask targets (the summed logits for another shape); gradients of the scored weights
    ``names``.  For 4-D inputs on the CPU both memory layouts are timed and the faster counts (the criteria
    use channels-last on large CPU batches); each number is the fastest of ``repeats`` runs, after one
    untimed run.  Parameters, buffers, grads and modes are restored."""
    shape, dtype, training = key
    x, y = batch
    kind = getattr(torch, dtype)
    net = model if kind == next(model.parameters()).dtype else copy.deepcopy(model).to(kind)
    gen = torch.Generator(device=x.device).manual_seed(0)
    inp = x.to(kind) if tuple(x.shape) == shape else torch.randn(shape, dtype=kind, device=x.device, generator=gen)
    loss = (lambda out: LOSS(out, y)) if inp.shape[0] == y.shape[0] else (lambda out: out.sum())
    layouts = [torch.contiguous_format]
    if inp.dim() == 4 and inp.device.type == "cpu":
        layouts.append(torch.channels_last)
    params = dict(net.named_parameters())
    targets = [params[n] for n in names]
    best = Floor()
    with preserved_state(net):
        net.train(training)
        for t in targets:
            t.requires_grad_(True)
        for layout in layouts:
            xin = inp.contiguous(memory_format=layout)
            for i in range(repeats + 1):
                clock = Clock(x.device)
                out = net(xin)
                f, f_cpu = clock.read()
                torch.autograd.grad(loss(out), targets, allow_unused=True)
                fb, fb_cpu = clock.read()
                if i:  # the first run of each layout is the untimed warm-up
                    best = Floor(min(best.forward_s, f), min(best.forward_backward_s, fb),
                                 min(best.forward_cpu_s, f_cpu), min(best.forward_backward_cpu_s, fb_cpu))
    return best


class Clock:
    """Wall-clock and process CPU seconds since construction (CUDA synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        sync(device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        sync(self.device)
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class CostSetting:
    """What :data:`DOCUMENTED` formulas may read: the criterion's options, the mask batch size, the number
    of mask batches (1 here), the device, the number of scored weights (for the Hutchinson route) and
    whether the model has batch normalisation (NTK-SAP's statistics pass)."""

    options: Any
    samples: int
    batches: int
    device: torch.device
    scored: int
    norms: bool


def _hutchinson_passes(c: CostSetting) -> tuple[int, int, str]:
    """Per batch one gradient with create_graph and K Hessian-vector products; the ``probes`` route (small
    models on the CPU) pushes the K probes through one batched double backward (one traversal)."""
    K = c.options.probes
    batched = default_route(c.device, "hessian", c.scored) == "probes" and K > 1
    hvps = 1 if batched else K
    return c.batches, c.batches * (1 + hvps), "per batch 1 + K, the K probes batched" if batched else "per batch 1 + K"


def _prospr_passes(c: CostSetting) -> tuple[int, int, str]:
    """M + 1 forwards (θ_0..θ_M); backwards: M inner gradients, the meta loss's, and with ``meta_grad:
    full`` one more traversal of each inner step's graph (the derivative through the M steps)."""
    M = c.options.inner_steps
    if c.options.meta_grad == "full":
        return M + 1, 2 * M + 1, "M + 1, 2M + 1 (M inner steps)"
    return M + 1, M + 1, "M + 1, M + 1 (M inner steps)"


def _one_pass(c: CostSetting) -> tuple[int, int, str]:
    return c.batches, c.batches, "one pass"


def _rounds_of_batches(c: CostSetting) -> tuple[int, int, str]:
    n = c.options.rounds * c.options.num_batches
    return n, n, "rounds x num_batches"


def _rounds_of_ones(c: CostSetting) -> tuple[int, int, str]:
    return c.options.rounds, c.options.rounds, "rounds, an all-ones input"


def _ntk_sap_passes(c: CostSetting) -> tuple[int, int, str]:
    """T rounds x R draws x B batches, each a BN-statistics forward (no grad; a model with BN), the two
    forwards of J and one backward of J, which traverses both."""
    draws = c.options.rounds * c.options.resamples * c.batches
    return draws * (3 if c.norms else 2), 2 * draws, "T x R x B x (BN pass + 2 forwards, 1 backward of both)"


def _px_passes(c: CostSetting) -> tuple[int, int, str]:
    """n rounds x the round's batches, each three forwards (the ReLU patterns and z1 without grad, z2) and one
    backward (through z2)."""
    n = c.options.rounds * (c.options.batches or c.batches)
    return 3 * n, n, "rounds x batches x (3 forwards, 1 backward)"


def _no_pass(c: CostSetting) -> tuple[int, int, str]:
    return 0, 0, "no pass"


def _grasp_passes(c: CostSetting) -> Optional[tuple[int, int, str]]:
    """g with create_graph, then Hg from the same graph: 1 forward, 2 backwards when all samples fit one chunk."""
    return (1, 2, "g, then Hg on its graph") if c.samples * c.batches <= c.options.chunk_size else None


# (forwards, backwards, formula) as docs/criteria.md's "cost per scoring" column states them, for one chunk of
# mask samples; None (or a name not listed): not stated here
DOCUMENTED: dict[str, Callable[[CostSetting], Optional[tuple[int, int, str]]]] = {
    **{n: _one_pass for n in ("grad_norm", "snip", "autosparse", "fisher_diag", "fisher_pruner", "fts")},
    "grasp": _grasp_passes,
    **{n: _hutchinson_passes for n in HUTCHINSON},
    **{n: _rounds_of_ones for n in ("synflow", "synflow_l2")},
    **{n: _rounds_of_batches for n in ("iter_snip", "force", "grasp_it")},
    "prospr": _prospr_passes,
    "ntk_sap": _ntk_sap_passes,
    "px": _px_passes,
    **{n: _no_pass for n in ("magnitude", "random", "uniform", "erk", "er", "igq", "smart_ratio", "uniform_plus",
                              "phew")},
}


def _differs(key: PassKey, main: PassKey) -> str:
    """What sets input ``key`` apart from the mask batch's ``main`` (batch size, dtype, mode), or ''."""
    what = []
    if key[0][:1] != main[0][:1]:
        what.append(f"batch {key[0][0] if key[0] else '?'}")
    if key[1] != main[1]:
        what.append(key[1])
    if key[2] != main[2]:
        what.append("train mode" if key[2] else "eval mode")
    return f" ({', '.join(what)})" if what else ""


def _per_input(values: dict[PassKey, str], main: PassKey) -> str:
    """``11`` for the mask batch; other inputs say what differs, e.g. ``10 (batch 1)``."""
    ordered = sorted(values.items(), key=lambda kv: kv[0] != main)
    return " + ".join(f"{v}{_differs(k, main)}" for k, v in ordered) or "0"


def cost_table(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], criteria: list[str], *, rounds: int,
               probes: int, predictor: Path, device: torch.device, repeats: int = 1,
               floor_repeats: int = 3) -> list[dict[str, Any]]:
    """One row per criterion (see the module docstring): seconds of ``score`` (fastest of ``repeats``), the
    counted forwards and backwards per input, the documented numbers, the floor of each input measured right
    after the criterion, and time / (Σ forwards x forward floor + backwards x backward floor), where the
    backward floor is (forward + backward) - forward: for a criterion with as many forwards as backwards on
    one input this is time / (passes x one forward + backward)."""
    names = compressors.prunable_names(model)
    params = dict(model.named_parameters())
    counter = PassCounter(first_module(model, batch[0]))
    main_key: PassKey = (tuple(batch[0].shape), str(batch[0].dtype).removeprefix("torch."), False)
    scored = sum(params[n].numel() for n in names)
    compressors.build("snip").score(model, [batch], LOSS)  # warm-up, not timed (lazy kernel/allocator set-up)
    rows = []
    try:
        for name in criteria:
            rows.append(cost_row(name, model, batch, names, counter, main_key, rounds=rounds, probes=probes,
                                 predictor=predictor, device=device, scored=scored, repeats=repeats,
                                 floor_repeats=floor_repeats))
            print("  " + "  ".join(cost_cells(rows[-1])), flush=True)
    finally:
        counter.close()
    return rows


def cost_row(name: str, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], names: list[str],
             counter: PassCounter, main_key: PassKey, *, rounds: int, probes: int, predictor: Path,
             device: torch.device, scored: int, repeats: int, floor_repeats: int) -> dict[str, Any]:
    """The cost row of one criterion (see :func:`cost_table`); the counts are those of the first run."""
    opts = criterion_options(name, probes, rounds, predictor)
    crit = compressors.build(name, **opts)
    seconds = cpu_seconds = math.inf
    counts = None
    for _ in range(max(1, repeats)):
        counter.reset()
        clock = Clock(device)
        crit.score(model, [batch], LOSS, sparsity=0.9)
        wall, cpu = clock.read()
        seconds, cpu_seconds = min(seconds, wall), min(cpu_seconds, cpu)
        if counts is None:
            counts = (Counter(counter.forwards), Counter(counter.backwards), counter.unhookable)
    fwd, bwd, unhookable = counts
    floors = {key: pass_floor(model, key, batch, names, floor_repeats) for key in sorted(set(fwd) | set(bwd))}
    passes_s = sum(fwd[k] * v.forward_s + bwd[k] * (v.forward_backward_s - v.forward_s) for k, v in floors.items())
    passes_cpu = sum(fwd[k] * v.forward_cpu_s + bwd[k] * (v.forward_backward_cpu_s - v.forward_cpu_s)
                     for k, v in floors.items())
    norms = any(isinstance(m, NORMS) for m in model.modules())
    doc = DOCUMENTED[name](CostSetting(crit.options, batch[0].shape[0], 1, device, scored, norms)) \
        if name in DOCUMENTED else None
    counted = (sum(fwd.values()), sum(bwd.values()))
    ratio = seconds / passes_s if passes_s > 0 else None
    return {"criterion": name, "rounds": opts.get("rounds"), "seconds": seconds, "cpu_seconds": cpu_seconds,
            "forwards": counted[0], "backwards": counted[1], "unhookable": unhookable,
            "forwards_text": _per_input(fwd, main_key), "backwards_text": _per_input(bwd, main_key),
            "floor_text": _per_input({k: f"{v.forward_backward_s:.3f}" for k, v in floors.items()}, main_key),
            "floors": {f"{list(k[0])} {k[1]} {'train' if k[2] else 'eval'}": dataclasses.asdict(v)
                       for k, v in floors.items()},
            "floor_s": floors[main_key].forward_backward_s if main_key in floors else None,
            "passes_s": passes_s, "passes_cpu_s": passes_cpu, "documented": doc,
            "matches": None if doc is None else doc[:2] == counted, "ratio": ratio,
            "cpu_ratio": cpu_seconds / passes_cpu if passes_cpu > 0 else None,
            "flagged": ratio is not None and ratio > COST_GOAL}


def cost_cells(row: dict[str, Any]) -> list[str]:
    doc, ratio, cpu = row["documented"], row["ratio"], row["cpu_ratio"]
    return [row["criterion"], str(row["rounds"] or ""), f"{row['seconds']:.2f}", row["forwards_text"],
            row["backwards_text"] + (f" + {row['unhookable']} uncounted" if row["unhookable"] else ""),
            "not stated here" if doc is None else f"{doc[0]}, {doc[1]} ({doc[2]})" + ("" if row["matches"]
                                                                                       else ": differs"),
            "-" if row["floor_text"] == "0" else row["floor_text"],
            f"{row['passes_s']:.2f}" if row["passes_s"] else "-",
            "-" if ratio is None else f"{ratio:.2f}" + (f" > {COST_GOAL:g}" if row["flagged"] else ""),
            "-" if cpu is None else f"{cpu:.2f}"]


COST_HEADER = ["criterion", "rounds", "score s", "forwards (counted)", "backwards (counted)",
               "documented fwd, bwd", "floor s (fwd+bwd)", "passes x floor s", "ratio", "CPU-time ratio"]
def fmt(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


TABLES = ("main", "estimators", "cost")


def print_cost(model_name: str, model: nn.Module, samples: int, rounds: int, probes: int, device: torch.device,
               rows: list[dict[str, Any]]) -> None:
    multi = sorted(n for n in compressors.pruning_criteria() if has_option(n, "rounds"))
    defaults = ", ".join(f"{n} {f.default}" for n in multi for f in dataclasses.fields(compressors.get(n).Options)
                         if f.name == "rounds")
    print(f"\ncost on {model_name} ({sum(p.numel() for p in model.parameters()):,} parameters), one mask batch of "
          f"{samples} samples, sparsity 0.9, device {device} ({torch.get_num_threads()} threads); every multi-round "
          f"criterion at --cost-rounds {rounds} rounds (their defaults: {defaults}); Hutchinson at {probes} probes")
    print("passes counted at the model's first module per input; floor: one batched forward + backward of that "
          "input, measured right after the criterion; ratio: score s / (forwards x forward floor + backwards x "
          f"backward floor) in wall-clock seconds, and the same in this process's CPU seconds; '> {COST_GOAL:g}': "
          "above the goal of a multi-round criterion\n")
    print(fmt(COST_HEADER, [cost_cells(r) for r in rows]))
    flagged = [r["criterion"] for r in rows if r["flagged"] and r["rounds"]]
    print(f"\nmulti-round criteria above {COST_GOAL:g}x their passes: {', '.join(flagged) or 'none'}; "
          "PHEW makes no pass: its vectorised walks against the authors' Python loops are "
          "benchmarks/phew.py (ResNet18, same machine, both in one run)")


def main(argv: list[str] | None = None) -> dict[str, list]:
    """Run the tables asked for (``--tables``); returns their rows by table name."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small CNN, 10 samples, 3 probes, 5 rounds (seconds)")
    ap.add_argument("--model", default=None, help="registered model (default resnet18; --quick: digits_cnn)")
    ap.add_argument("--tables", default=",".join(TABLES),
                    help=f"comma-separated tables to print, of {', '.join(TABLES)} (default: all)")
    ap.add_argument("--samples", type=int, default=None, help="mask samples (default 100; --quick 10)")
    ap.add_argument("--hutch-samples", type=int, default=None,
                    help="mask samples for hutch_diag/hts rows (default: --samples); both sides use the same")
    ap.add_argument("--probes", type=int, default=None, help="Hutchinson probes per batch (default 10; --quick 3)")
    ap.add_argument("--ref-probes", type=int, default=None, help="probes of the Hutchinson reference (default 200)")
    ap.add_argument("--rounds", type=int, default=None, help="SynFlow rounds (default 100; --quick 5)")
    ap.add_argument("--criteria", default="grad_norm,snip,grasp,fisher_diag,fts,hutch_diag,hts,synflow")
    ap.add_argument("--table-samples", type=int, default=None,
                    help="samples of the estimator table (default: --samples)")
    ap.add_argument("--table-model", default=None,
                    help="model of the estimator table (default: --model); its inputs are shaped for it")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs per side, interleaved; the table shows the fastest (default 3)")
    ap.add_argument("--hutch-repeats", type=int, default=1, help="the same for hutch_diag/hts (default 1)")
    ap.add_argument("--no-estimator-table", action="store_true", help="the same as leaving estimators out of --tables")
    ap.add_argument("--cost-criteria", default=None,
                    help="criteria of the cost table (default: every registered pruning criterion)")
    ap.add_argument("--cost-samples", type=int, default=None,
                    help="samples of the cost table's one mask batch (default 100; --quick 10)")
    ap.add_argument("--cost-rounds", type=int, default=None,
                    help="rounds of every multi-round criterion in the cost table (default 10; --quick 3)")
    ap.add_argument("--cost-repeats", type=int, default=1,
                    help="timed runs of each criterion in the cost table; the fastest counts (default 1)")
    ap.add_argument("--floor-repeats", type=int, default=3,
                    help="timed runs of each pass floor, after an untimed one; the fastest counts (default 3)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    tables = [t for t in args.tables.split(",") if t]
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        ap.error(f"--tables: unknown {unknown}; valid: {', '.join(TABLES)}")
    if args.no_estimator_table and "estimators" in tables:
        tables.remove("estimators")
    q = args.quick
    model_name = args.model or ("digits_cnn" if q else "resnet18")
    samples = args.samples or (10 if q else 100)
    probes = args.probes or (3 if q else 10)
    rounds = args.rounds or (5 if q else 100)
    ref_probes = args.ref_probes or (20 if q else 200)
    device = torch.device(args.device)
    shape = (1, 8, 8) if model_name == "digits_cnn" else (3, 32, 32)
    torch.manual_seed(0)
    model = models.build(model_name, num_classes=10, input_shape=shape).to(device)
    x, y = make_data(samples, 10, shape, device)
    batches = split(x, y, 1)
    out: dict[str, list] = {}
    if "main" in tables:
        print(f"device {device} ({torch.get_num_threads()} threads), model {model_name} "
              f"({sum(p.numel() for p in model.parameters()):,} parameters), {samples} mask samples, batch 1")
        out["main"] = main_table(model, batches, shape, [c for c in args.criteria.split(",") if c], probes, rounds,
                                 args.hutch_samples or samples, device, max(1, args.repeats),
                                 max(1, args.hutch_repeats))
        print()
        print(fmt(["criterion", "samples", "ours s", "loop s", "speed-up", "ours MiB", "loop MiB", "max dev"],
                  out["main"]))
    if "estimators" in tables:
        n = args.table_samples or samples
        tmodel, tx, ty = model, x[:n], y[:n]
        if args.table_model and args.table_model != model_name:
            tshape = (1, 8, 8) if args.table_model == "digits_cnn" else (3, 32, 32)
            torch.manual_seed(0)
            tmodel = models.build(args.table_model, num_classes=10, input_shape=tshape).to(device)
            tx, ty = make_data(n, 10, tshape, device)
        print(f"\nestimator vs mask batch size ({args.table_model or model_name}, {n} samples; Fisher reference: "
              f"batch 1 exact; Hutchinson reference: {ref_probes} probes on one batch of all samples)")
        out["estimators"] = est = estimator_table(tmodel, tx, ty, probes, ref_probes, device)
        print()
        print(fmt(["estimator", "batch size", "batches", "probes/batch", "time s", "rel. L2 error",
                   "kept overlap @90%"], est))
    if "cost" in tables:
        n = args.cost_samples or (10 if q else 100)
        cost_rounds = args.cost_rounds or (3 if q else 10)
        criteria = [c for c in (args.cost_criteria or "").split(",") if c] or compressors.pruning_criteria()
        cx, cy = make_data(n, 10, shape, device, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            print(f"\ncost table ({len(criteria)} criteria):")
            out["cost"] = cost_table(model, (cx, cy), criteria, rounds=cost_rounds, probes=probes,
                                     predictor=write_predictor(Path(tmp)), device=device,
                                     repeats=args.cost_repeats, floor_repeats=max(1, args.floor_repeats))
        print_cost(model_name, model, n, cost_rounds, probes, device, out["cost"])
    return out


if __name__ == "__main__":
    main()
