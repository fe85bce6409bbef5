"""Scoring speed and memory: our criteria vs naive per-batch loops written like the reference code.

    python benchmarks/scoring.py            # ResNet18 (CIFAR variant), 100 CIFAR-shaped mask samples,
                                            # batch 1, every data-dependent criterion + synflow
    python benchmarks/scoring.py --quick    # a small CNN and 10 samples: a smoke run in seconds

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
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compressors  # noqa: E402
import models  # noqa: E402
from compressors.base import preserved_state  # noqa: E402
from compressors.estimators import RademacherProbes  # noqa: E402

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


def fmt(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small CNN, 10 samples, 3 probes, 5 rounds (seconds)")
    ap.add_argument("--model", default=None, help="registered model (default resnet18; --quick: digits_cnn)")
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
    ap.add_argument("--no-estimator-table", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
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
    print(f"device {device} ({torch.get_num_threads()} threads), model {model_name} "
          f"({sum(p.numel() for p in model.parameters()):,} parameters), {samples} mask samples, batch 1")
    rows = main_table(model, batches, shape, [c for c in args.criteria.split(",") if c], probes, rounds,
                      args.hutch_samples or samples, device, max(1, args.repeats), max(1, args.hutch_repeats))
    print()
    print(fmt(["criterion", "samples", "ours s", "loop s", "speed-up", "ours MiB", "loop MiB", "max dev"], rows))
    if not args.no_estimator_table:
        n = args.table_samples or samples
        tmodel, tx, ty = model, x[:n], y[:n]
        if args.table_model and args.table_model != model_name:
            tshape = (1, 8, 8) if args.table_model == "digits_cnn" else (3, 32, 32)
            torch.manual_seed(0)
            tmodel = models.build(args.table_model, num_classes=10, input_shape=tshape).to(device)
            tx, ty = make_data(n, 10, tshape, device)
        print(f"\nestimator vs mask batch size ({args.table_model or model_name}, {n} samples; Fisher reference: "
              f"batch 1 exact; Hutchinson reference: {ref_probes} probes on one batch of all samples)")
        est = estimator_table(tmodel, tx, ty, probes, ref_probes, device)
        print()
        print(fmt(["estimator", "batch size", "batches", "probes/batch", "time s", "rel. L2 error",
                   "kept overlap @90%"], est))


if __name__ == "__main__":
    main()
