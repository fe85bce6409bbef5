"""Shared estimators used by the data-dependent criteria (one place, reused by every criterion).

Notation (paper, Sec. 3).  The mask data is split into B mask batches of sizes n_1..n_B.  With the model
in eval mode (BN uses its running statistics, so a sample's output does not depend on its batch),
``ell_b = (1/n_b) sum_{i in b} loss(f(x_i)/T, y_i)`` is the mean loss of batch b with the logits divided
by the temperature T (T = 1 unless stated), ``g_b = grad ell_b`` and ``H_b = hess ell_b``.

Two kinds of quantity are estimated here:

* quantities of the **summed** loss ``L = sum_b ell_b`` (its gradient ``sum_b g_b``, Hessian-vector
  products ``H v = sum_b H_b v``, GraSP's ``H g``).  They are linear in the batches, so they are computed
  in a few large chunked passes over all mask samples at once (``chunk_size`` samples per pass) with
  every sample weighted by ``1/n_b`` of its own batch, which is exact also when the last batch is
  smaller;
* **per-batch** quantities (the empirical Fisher diagonal ``(1/B) sum_b g_b^2``, the Hutchinson diagonal
  ``(1/(BK)) sum_b sum_k z_bk * (H_b z_bk)``), which need each ``g_b`` / ``H_b z`` separately.  They have
  several exact routes, chosen per device (``route="auto"``):

  - ``loop``: one backward (or K double-backwards) per batch, the reference implementation;
  - ``hooks`` (per-batch gradients of Conv2d/Linear weights): one batched forward/backward per chunk,
    the per-batch weight gradients formed from the saved layer inputs and output gradients (unfolded
    convolution, one batched matmul per layer);
  - ``probes`` (Hutchinson): one gradient with ``create_graph`` per batch, its K probes pushed through a
    single batched double-backward (``is_grads_batched``);
  - ``vmap``: ``torch.func`` (``functional_call`` + ``vmap`` of ``grad`` / ``jvp(grad)``), batched over
    batches and probes; meant for GPUs (not measured here: no GPU was available to this work).

  Measured on a 2-core CPU (benchmarks/scoring.py): ``auto`` picks ``loop`` for per-batch gradients on
  CPU (``hooks`` tied with it on ResNet18) and, for Hutchinson, ``probes`` on small models and
  ``loop`` on large ones (see :func:`default_route`); on CUDA ``vmap``; ``hooks`` falls back to
  ``loop`` whenever it does not apply to the model.

Every function puts the model in eval mode and sets ``requires_grad`` only on the named parameters;
call them inside :func:`compressors.base.preserved_state` (as ``Compressor.score`` does) to restore both.

Probes are Rademacher vectors drawn from the caller's generator in a fixed order, identical for every
route: for each batch b (in loader order), for each probe k, one flat vector over all scored parameters
(``names`` order), one random byte per 8 entries (see :class:`RademacherProbes`).

Large image passes on the CPU run in channels-last layout (see ``CHANNELS_LAST_MIN_SAMPLES``).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compressors.base import model_device
from utils.progress import progress

Batch = tuple[torch.Tensor, torch.Tensor]
Tensors = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_CHUNK = 128
# the per-batch routes hold (batches in a chunk) x (scored weights) values at once: cap that at 2^28
# values (1 GiB in float32; e.g. 23 batches per chunk for ResNet18's 11.2M prunable weights) on the CPU,
# and at an eighth of the free memory on a GPU
PER_BATCH_BUDGET = 1 << 28


def _max_batches(targets: Sequence[torch.Tensor], copies: int = 1) -> int:
    total = sum(t.numel() for t in targets) * copies
    budget = PER_BATCH_BUDGET
    if targets and targets[0].is_cuda:
        free, _ = torch.cuda.mem_get_info(targets[0].device)
        budget = max(budget, free // (8 * targets[0].element_size()))
    return max(1, budget // max(total, 1))
ROUTES_GRAD = ("auto", "loop", "hooks", "vmap")
ROUTES_HESS = ("auto", "loop", "probes", "vmap")


# --------------------------------------------------------------------------------------- data helpers
def batches_on(loader: Iterable, device: torch.device) -> list[Batch]:
    """Materialise the mask data on ``device`` (it is small: per_class_samples x classes)."""
    return [(x.to(device), y.to(device)) for x, y in loader]


def _as_batches(model: nn.Module, loader: Iterable) -> list[Batch]:
    if isinstance(loader, list) and all(isinstance(b, tuple) for b in loader):
        dev = model_device(model)
        return [(x.to(dev), y.to(dev)) for x, y in loader]
    return batches_on(loader, model_device(model))


def chunk_batches(sizes: Sequence[int], chunk_size: int, *, equal_sizes: bool = False,
                  max_batches: int | None = None) -> list[list[int]]:
    """Group consecutive batch indices into chunks of at most ``chunk_size`` samples and at most
    ``max_batches`` batches (always at least one batch per chunk).  ``equal_sizes`` also starts a new
    chunk when the batch size changes (needed by the per-batch routes, which reshape a chunk to
    (batches, n, ...))."""
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for b, n in enumerate(sizes):
        if current and (total + n > chunk_size or (equal_sizes and n != sizes[current[0]])
                        or (max_batches is not None and len(current) >= max_batches)):
            chunks.append(current)
            current, total = [], 0
        current.append(b)
        total += n
    if current:
        chunks.append(current)
    return chunks


def _targets(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    params = dict(model.named_parameters())
    return [params[n] for n in names]


def _prepare(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    """Eval mode; gradients only for the targets (the caller restores flags via preserved_state)."""
    model.eval()
    wanted = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in wanted)
    return _targets(model, names)


def _is_plain_mean_ce(loss_fn: LossFn) -> bool:
    """A standard ``nn.CrossEntropyLoss`` with mean reduction and no class weights."""
    return (type(loss_fn) is nn.CrossEntropyLoss and loss_fn.reduction == "mean" and loss_fn.weight is None)


def summed_batch_loss(out: torch.Tensor, ys: Sequence[torch.Tensor], loss_fn: LossFn) -> torch.Tensor:
    """sum_b ell_b for a chunk: ``out`` holds the (temperature-scaled) outputs of the concatenated
    batches whose targets are ``ys``; each batch keeps its own mean, so a smaller last batch is weighted
    exactly as in a per-batch loop."""
    if len(ys) > 1 and _is_plain_mean_ce(loss_fn):
        # one call instead of one per batch: each sample weighted by 1 / (size of its batch), exactly
        # sum_b mean_{i in b} ce_i
        y = torch.cat(list(ys))
        if not bool((y == loss_fn.ignore_index).any()):
            per_sample = F.cross_entropy(out, y, reduction="none", label_smoothing=loss_fn.label_smoothing)
            weights = torch.cat([per_sample.new_full((b.shape[0],), 1.0 / b.shape[0]) for b in ys])
            return (per_sample * weights).sum()
    total = out.new_zeros(())
    start = 0
    for y in ys:
        n = y.shape[0]
        total = total + loss_fn(out[start:start + n], y)
        start += n
    return total


# CPU convolutions (oneDNN) run faster on channels-last images once a pass holds enough samples (ResNet18,
# 100 samples on a 2-core CPU, forward + backward: 1.70 s channels-last vs 1.92 s in chunks of 100, and
# 1.78 s vs 1.95 s in chunks of 25) but slower on small ones (2.27 s vs 2.16 s in chunks of 10; a single
# sample: 0.044 s vs 0.034 s per gradient).  The same arithmetic in another memory layout: values agree to
# float rounding.
CHANNELS_LAST_MIN_SAMPLES = 20
_NCHW_ONLY: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models whose forward rejected channels-last


def _has_unsafe_strided_pointwise_conv(model: nn.Module) -> bool:
    """Does ``model`` hold a strided 1x1 convolution with fewer than 8 input channels?  On the CPU, the
    channels-last backward of such a layer in torch 2.14.1 (oneDNN, one intra-op thread, AMD EPYC) corrupts
    the heap ("double free or corruption": 4 -> 8 and 4 -> 4 channels crash, 8 -> 16 and wider do not; seen
    on this project's CI machine).  Only toy widths have such layers; those models keep the plain layout."""
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8
               for m in model.modules())


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, with ``x`` in channels-last layout for large image batches on the CPU.  A model whose
    forward cannot take it (e.g. ``.view`` of a feature map) raises on the first try; it is remembered and
    run in the plain layout (a genuine error is raised again there)."""
    if (x.dim() == 4 and x.device.type == "cpu" and x.shape[0] >= CHANNELS_LAST_MIN_SAMPLES
            and model not in _NCHW_ONLY and not _has_unsafe_strided_pointwise_conv(model)):
        try:
            return model(x.contiguous(memory_format=torch.channels_last))
        except RuntimeError:
            _NCHW_ONLY.add(model)
    return model(x)


def _chunk_loss(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn, temperature: float) -> torch.Tensor:
    x = torch.cat([b[0] for b in batches]) if len(batches) > 1 else batches[0][0]
    out = _forward(model, x)
    if temperature != 1.0:
        out = out / temperature
    return summed_batch_loss(out, [b[1] for b in batches], loss_fn)


def _grads(loss: torch.Tensor, targets: Sequence[torch.Tensor], **kw) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(targets), allow_unused=True, **kw)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, targets)]


# ------------------------------------------------------------------------ quantities of the summed loss
def summed_gradient(model: nn.Module, names: Sequence[str], loader: Iterable, loss_fn: LossFn, *,
                    temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK) -> Tensors:
    """``sum_b g_b = grad_theta sum_b ell_b`` (eval mode, logits / T), in chunked passes."""
    batches = _as_batches(model, loader)
    targets = _prepare(model, names)
    total = [torch.zeros_like(p) for p in targets]
    for chunk in chunk_batches([y.shape[0] for _, y in batches], chunk_size):
        loss = _chunk_loss(model, [batches[b] for b in chunk], loss_fn, temperature)
        torch._foreach_add_(total, [g.detach() for g in _grads(loss, targets)])
    return dict(zip(names, total))


def mean_gradient(model: nn.Module, names: Sequence[str], loader: Iterable, loss_fn: LossFn, *,
                  temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK) -> Tensors:
    """``g_bar = (1/B) sum_b g_b``."""
    batches = _as_batches(model, loader)
    total = summed_gradient(model, names, batches, loss_fn, temperature=temperature, chunk_size=chunk_size)
    return {n: g / len(batches) for n, g in total.items()}


def _hvp_of_grads(grads: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor],
                  targets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``H v`` from gradients taken with ``create_graph``: the gradient of ``<grads, v>``."""
    dot = sum((g * v).sum() for g, v in zip(grads, vectors) if g.requires_grad)
    if isinstance(dot, torch.Tensor) and dot.requires_grad:
        return [h.detach() for h in _grads(dot, targets)]
    return [torch.zeros_like(t) for t in targets]


def hessian_vector_product(model: nn.Module, names: Sequence[str], loader: Iterable, loss_fn: LossFn,
                           vectors: Tensors, *, temperature: float = 1.0,
                           chunk_size: int = DEFAULT_CHUNK) -> Tensors:
    """``H v`` with H the Hessian of ``sum_b ell_b`` w.r.t. the named parameters (double backward of
    ``<grad L_chunk, v>`` per chunk; exact because H of a sum is the sum of the chunks' Hessians)."""
    batches = _as_batches(model, loader)
    targets = _prepare(model, names)
    vs = [vectors[n].detach() for n in names]
    total = [torch.zeros_like(p) for p in targets]
    for chunk in chunk_batches([y.shape[0] for _, y in batches], chunk_size):
        loss = _chunk_loss(model, [batches[b] for b in chunk], loss_fn, temperature)
        torch._foreach_add_(total, _hvp_of_grads(_grads(loss, targets, create_graph=True), vs, targets))
    return dict(zip(names, total))


def grasp_hg(model: nn.Module, names: Sequence[str], loader: Iterable, loss_fn: LossFn, *,
             temperature: float = 200.0, chunk_size: int = DEFAULT_CHUNK,
             redraw: bool = False) -> tuple[Tensors, Tensors]:
    """GraSP's ``(g, H g)``: ``g = sum_b grad ell_b`` and ``H g`` with H the Hessian of ``sum_b ell_b``,
    both with logits / T and w.r.t. the named weights.

    When all mask samples fit in one chunk, ``g`` is taken with ``create_graph`` and the same graph gives
    ``H g`` (one forward and one first backward instead of two of each; the reference code runs a
    separate gradient pass).  Otherwise a first pass sums ``g`` over the chunks, and a second computes
    ``H g`` chunk by chunk (``g`` must be complete before any ``H g`` term).

    ``redraw``: ``g`` and ``H g`` each come from their own pass over ``loader`` (iterated twice, so a
    shuffling, augmenting mask loader gives the second pass other batches), as the official code's two loops
    ``GRASP_Mask_First`` / ``GRASP_Mask_Second`` do."""
    if redraw:
        g = summed_gradient(model, names, batches_on(loader, model_device(model)), loss_fn, temperature=temperature,
                            chunk_size=chunk_size)
        hg = hessian_vector_product(model, names, batches_on(loader, model_device(model)), loss_fn, g,
                                    temperature=temperature, chunk_size=chunk_size)
        return g, hg
    batches = _as_batches(model, loader)
    chunks = chunk_batches([y.shape[0] for _, y in batches], chunk_size)
    if len(chunks) > 1:
        g = summed_gradient(model, names, batches, loss_fn, temperature=temperature, chunk_size=chunk_size)
        hg = hessian_vector_product(model, names, batches, loss_fn, g, temperature=temperature,
                                    chunk_size=chunk_size)
        return g, hg
    targets = _prepare(model, names)
    grads = _grads(_chunk_loss(model, batches, loss_fn, temperature), targets, create_graph=True)
    g = [gr.detach() for gr in grads]
    hg = _hvp_of_grads(grads, g, targets)
    # contiguous, as the summed passes return (a channels-last pass gives channels-last gradients)
    return ({n: t.contiguous() for n, t in zip(names, g)}, {n: t.contiguous() for n, t in zip(names, hg)})


# ------------------------------------------------------------------------------- per-batch gradients
def _owners(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module] | None:
    """The module owning each named weight, if the ``hooks`` route supports all of them: weights of
    Linear or zero-padded, ungrouped Conv2d layers, each used by exactly one module."""
    params = dict(model.named_parameters())
    users: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for pn, p in module.named_parameters(recurse=False):
            users.setdefault(id(p), []).append((module, pn))
    owners = {}
    for n in names:
        use = users.get(id(params[n]), [])
        if len(use) != 1:
            return None
        module, pn = use[0]
        if pn != "weight":
            return None
        if isinstance(module, nn.Linear):
            owners[n] = module
        elif (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
              and not isinstance(module.padding, str)):
            owners[n] = module
        else:
            return None
    return owners


class _RouteUnsupported(RuntimeError):
    pass


def _hooks_chunk(model: nn.Module, owners: dict[str, nn.Module], chunk: Sequence[Batch], loss_fn: LossFn,
                 temperature: float) -> Tensors:
    """Per-batch gradients ``(Bc, *shape)`` of the owned weights for one chunk of equal-size batches."""
    inputs: dict[nn.Module, torch.Tensor] = {}
    outputs: dict[nn.Module, torch.Tensor] = {}
    calls: dict[nn.Module, int] = {}

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        calls[module] = calls.get(module, 0) + 1
        inputs[module] = args[0].detach()
        outputs[module] = out
        return out.clone()  # later in-place ops (ReLU(inplace=True)) must not touch the saved output

    modules = list(dict.fromkeys(owners.values()))
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        loss = _chunk_loss(model, chunk, loss_fn, temperature)
    finally:
        for h in handles:
            h.remove()
    if any(calls.get(m, 0) != 1 for m in modules) or not all(outputs[m].requires_grad for m in modules):
        raise _RouteUnsupported("a hooked module was not called exactly once")
    deltas = torch.autograd.grad(loss, [outputs[m] for m in modules], allow_unused=True)
    nb, n = len(chunk), chunk[0][1].shape[0]
    per_module = {}
    for m, d in zip(modules, deltas):
        a = inputs[m]
        if d is None:
            per_module[m] = torch.zeros((nb, *m.weight.shape), device=a.device, dtype=a.dtype)
            continue
        if isinstance(m, nn.Linear):
            a2 = a.reshape(nb, -1, a.shape[-1])            # (Bc, n*S, in)
            d2 = d.reshape(nb, -1, d.shape[-1])            # (Bc, n*S, out)
            g = torch.bmm(d2.transpose(1, 2), a2)          # (Bc, out, in)
        else:
            cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
            d2 = d.reshape(d.shape[0], d.shape[1], -1)     # (N, O, L)
            if n > 1:                                      # fold the n samples of a batch into the sum
                cols = cols.reshape(nb, n, cols.shape[1], -1).transpose(1, 2).reshape(nb, cols.shape[1], -1)
                d2 = d2.reshape(nb, n, d2.shape[1], -1).transpose(1, 2).reshape(nb, d2.shape[1], -1)
            g = torch.bmm(d2, cols.transpose(1, 2))        # (Bc, O, C*kh*kw)
        per_module[m] = g.reshape(nb, *m.weight.shape)
    return {name: per_module[m] for name, m in owners.items()}


def _loop_chunk(model: nn.Module, names: Sequence[str], targets: Sequence[torch.Tensor], chunk: Sequence[Batch],
                loss_fn: LossFn, temperature: float) -> Tensors:
    rows = [_grads(_chunk_loss(model, [b], loss_fn, temperature), targets) for b in chunk]
    if len(rows) == 1:  # a view, no copy
        return {n: rows[0][i].unsqueeze(0) for i, n in enumerate(names)}
    return {n: torch.stack([r[i] for r in rows]) for i, n in enumerate(names)}


def _functional_loss(model: nn.Module, loss_fn: LossFn, temperature: float):
    from torch.func import functional_call

    def loss(params: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, params, (x,))
        if temperature != 1.0:
            out = out / temperature
        return loss_fn(out, y)

    return loss


def _vmap_chunk(model: nn.Module, names: Sequence[str], chunk: Sequence[Batch], loss_fn: LossFn,
                temperature: float) -> Tensors:
    from torch.func import grad, vmap

    params = {n: p.detach() for n, p in zip(names, _targets(model, names))}
    xs = torch.stack([b[0] for b in chunk])
    ys = torch.stack([b[1] for b in chunk])
    return vmap(grad(_functional_loss(model, loss_fn, temperature)), in_dims=(None, 0, 0))(params, xs, ys)


SMALL_MODEL = 1_000_000  # scored weights below which batching the probes pays off on a CPU


def default_route(device: torch.device, kind: str = "grad", scored: int = 0) -> str:
    """The route ``auto`` resolves to (deterministic, so scores do not depend on timing): ``vmap`` on
    CUDA; on CPU ``loop`` for per-batch gradients (ResNet18, 100 samples, idle 2-core CPU: loop 6.3 s,
    hooks 6.5 s with 1.6 GB more memory), and for Hutchinson ``probes`` on small models
    (< 1M scored weights; digits CNN, 10 samples x 10 probes: 0.18 s vs 0.22 s for the loop) but
    ``loop`` on large ones (ResNet18, 2 samples x 10 probes: loop 2.9 s, probes 4.0 s, vmap 5.7 s;
    re-measured with the byte-stream probes, 3 samples x 10 probes: loop 4.7-5.4 s, probes 6.6-6.9 s),
    measured on an idle 2-core CPU."""
    if device.type == "cuda":
        return "vmap"
    if kind == "grad":
        return "loop"
    return "probes" if scored < SMALL_MODEL else "loop"


def per_batch_gradients(model: nn.Module, names: Sequence[str], loader: Iterable, loss_fn: LossFn, *,
                        temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK,
                        route: str = "auto") -> Iterator[Tensors]:
    """Yield, chunk by chunk, the stacked per-batch gradients ``{name: (Bc, *shape)}`` with row b equal
    to ``g_b = grad ell_b`` (eval mode, logits / T).  Every route gives the same values (to float
    tolerance); ``route`` picks how (see the module docstring)."""
    if route not in ROUTES_GRAD:
        raise ValueError(f"route must be one of {ROUTES_GRAD}, got {route!r}")
    batches = _as_batches(model, loader)
    targets = _prepare(model, names)
    if route == "auto":
        route = default_route(model_device(model), "grad")
    owners = _owners(model, names) if route == "hooks" else None
    if route == "hooks" and owners is None:
        route = "loop"
    chunks = chunk_batches([y.shape[0] for _, y in batches], chunk_size, equal_sizes=True,
                           max_batches=_max_batches(targets))
    for chunk_idx in progress(chunks, desc="per-batch gradients", unit="chunk"):
        chunk = [batches[b] for b in chunk_idx]
        if route == "hooks":
            try:
                yield _hooks_chunk(model, owners, chunk, loss_fn, temperature)  # type: ignore[arg-type]
                continue
            except _RouteUnsupported:
                route = "loop"
        if route == "vmap":
            yield _vmap_chunk(model, names, chunk, loss_fn, temperature)
        else:  # one batch at a time, as the reference loop (no stacked copies of the gradients)
            for b in chunk:
                yield _loop_chunk(model, names, targets, [b], loss_fn, temperature)


@dataclass
class FisherResult:
    """``fisher = (1/B) sum_b g_b^2`` and ``mean_grad = (1/B) sum_b g_b``."""

    fisher: Tensors
    mean_grad: Tensors
    batches: int


def fisher_diagonal(model: nn.Module, names: Sequence[str], loader: Iterable, loss_fn: LossFn, *,
                    chunk_size: int = DEFAULT_CHUNK, route: str = "auto") -> FisherResult:
    """Empirical Fisher diagonal ``F = (1/B) sum_b g_b (.) g_b`` and the mean gradient, from the same
    per-batch gradients."""
    batches = _as_batches(model, loader)
    params = dict(model.named_parameters())
    sq = {n: torch.zeros_like(params[n]) for n in names}
    s = {n: torch.zeros_like(params[n]) for n in names}
    for rows in per_batch_gradients(model, names, batches, loss_fn, chunk_size=chunk_size, route=route):
        for n in names:
            r = rows[n].detach()
            if r.shape[0] == 1:  # one batch: accumulate in place, no temporaries
                sq[n].addcmul_(r[0], r[0])
                s[n].add_(r[0])
            else:
                sq[n].add_((r * r).sum(0))
                s[n].add_(r.sum(0))
    B = len(batches)
    return FisherResult({n: v / B for n, v in sq.items()}, {n: v / B for n, v in s.items()}, B)


# --------------------------------------------------------------------------------------- Hutchinson
def flat_views(flat: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """Views ``(lead..., *shape)`` of consecutive pieces of ``flat`` shaped ``(lead..., sum of sizes)``:
    one flat buffer holding one tensor per parameter (probes, accumulators, SynFlow's scores and mask)."""
    lead = flat.shape[:-1]
    parts = flat.split([math.prod(s) for s in shapes], dim=-1)
    return [part.view((*lead, *shape)) for part, shape in zip(parts, shapes)]


_SIGN_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _sign_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(256, 8): row v holds the signs of the bits of byte v, least significant first (+1 set, -1 clear)."""
    key = (torch.device(device), dtype)
    if key not in _SIGN_TABLES:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        _SIGN_TABLES[key] = bits.to(device=device, dtype=dtype).mul_(2).sub_(1)
    return _SIGN_TABLES[key]


class RademacherProbes:
    """Rademacher probes (+-1 with probability 1/2) over the concatenation of the scored parameters.

    One probe is one flat vector of ``total`` entries (the parameters in ``names`` order, each flattened
    row-major), drawn with **one** call ``torch.randint(0, 256, (ceil(total / 8),), generator=g)``: bit j
    (least significant first) of byte i gives entry 8i + j, +1 when set and -1 when clear.  Probes are
    drawn one call at a time, in the order they are used, so every route sees the same probes for the same
    generator state.  Drawing a byte per 8 entries and expanding it through a 256-row sign table costs
    ~9 ms per 11M entries on a 2-core CPU, against ~60 ms for one ``randint(0, 2)`` per entry (and
    ~170 ms for ``bernoulli_``), which matters at B*K probes of a ResNet.

    The values live in buffers reused across draws (no fresh allocation per probe): a draw overwrites
    the previous one."""

    def __init__(self, shapes: Sequence[torch.Size], generator: torch.Generator, device: torch.device,
                 dtype: torch.dtype, slots: int = 1) -> None:
        self.shapes = [torch.Size(s) for s in shapes]
        self.sizes = [s.numel() for s in self.shapes]
        self.total = sum(self.sizes)
        self.generator = generator
        self.nbytes = (self.total + 7) // 8
        self.table = _sign_table(device, dtype)
        self._bytes = torch.empty(self.nbytes, dtype=torch.int64, device=device)
        self._values = torch.empty((slots, self.nbytes, 8), dtype=dtype, device=device)

    def draw(self, count: int = 1) -> torch.Tensor:
        """``count`` new probes, drawn one after the other: a ``(count, total)`` view of the buffer."""
        if count > self._values.shape[0]:
            self._values = self._values.new_empty((count, self.nbytes, 8))
        for k in range(count):
            torch.randint(0, 256, (self.nbytes,), generator=self.generator, out=self._bytes)
            torch.index_select(self.table, 0, self._bytes, out=self._values[k])
        return self._values[:count].view(count, -1)[:, :self.total]

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views ``(lead..., *shape)`` of ``flat`` shaped ``(lead..., total)``."""
        return flat_views(flat, self.shapes)


@dataclass
class HutchinsonResult:
    """``diag = (1/M) sum u`` with ``u = z (.) H_b z`` over the M = B*K (batch, probe) pairs, its
    per-entry standard error ``stderr = sqrt(var(u) / M)`` (unbiased variance; NaN when M = 1) and the
    mean gradient ``(1/B) sum_b g_b`` of the same batches and temperature."""

    diag: Tensors
    stderr: Tensors
    mean_grad: Tensors
    samples: int

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Per tensor: mean |H_hat|, mean standard error, and the fraction of entries with
        |H_hat| > 2 standard errors (resolved from the noise)."""
        out = {}
        for n, d in self.diag.items():
            se = self.stderr[n]
            out[n] = {"mean_abs_diag": float(d.abs().mean()), "mean_stderr": float(se.mean()),
                      "resolved_fraction": float((d.abs() > 2 * se).float().mean())}
        return out


def hutchinson_diagonal(model: nn.Module, names: Sequence[str], loader: Iterable, loss_fn: LossFn, *,
                        probes: int, generator: torch.Generator, temperature: float = 1.0,
                        chunk_size: int = DEFAULT_CHUNK, route: str = "auto") -> HutchinsonResult:
    """Hutchinson estimate of the Hessian diagonal, ``H_hat = (1/(B K)) sum_b sum_k z_bk (.) (H_b z_bk)``,
    with K Rademacher probes per mask batch (H_b: Hessian of ell_b with logits / T), plus its standard
    error and the mean gradient (see :class:`HutchinsonResult`).  Probes come from
    :class:`RademacherProbes` (for each batch in loader order, its K probes), so every route gives the
    same estimate for the same generator state.  Since ``z * z = 1``, ``u^2 = (H_b z)^2``: the sums of
    u and u^2 are accumulated in place with two fused multiply-adds per probe, without temporaries."""
    if route not in ROUTES_HESS:
        raise ValueError(f"route must be one of {ROUTES_HESS}, got {route!r}")
    if probes < 1:
        raise ValueError("probes must be >= 1")
    batches = _as_batches(model, loader)
    targets = _prepare(model, names)
    device = model_device(model)
    if route == "auto":
        route = default_route(device, "hessian", sum(t.numel() for t in targets))
    dtype = targets[0].dtype if targets else torch.float32
    stream = RademacherProbes([t.shape for t in targets], generator, device, dtype,
                              slots=1 if route == "loop" else probes)
    # flat sums of u and u^2 in the parameters' dtype (as the reference loop accumulates); the variance is
    # formed in float64 at the end
    s1_flat = torch.zeros(stream.total, dtype=dtype, device=device)
    s2_flat = torch.zeros(stream.total, dtype=dtype, device=device)
    s1, s2 = stream.split(s1_flat), stream.split(s2_flat)
    gsum = [torch.zeros_like(p) for p in targets]

    def accumulate(z: Sequence[torch.Tensor], hz: Sequence[torch.Tensor | None]) -> None:
        """Add the samples of one probe, or of several stacked along a leading dimension."""
        live = [i for i, hi in enumerate(hz) if hi is not None]  # None: the loss ignores it, u = 0
        h = [hz[i].detach() for i in live]
        if live and h[0].dim() > targets[live[0]].dim():
            for i, hi in zip(live, h):
                s1[i].add_((z[i] * hi).sum(0))
                s2[i].add_((hi * hi).sum(0))
        elif live:
            torch._foreach_addcmul_([s1[i] for i in live], [z[i] for i in live], h)
            torch._foreach_addcmul_([s2[i] for i in live], h, h)

    if route == "vmap":
        from torch.func import grad, jvp, vmap
        floss = _functional_loss(model, loss_fn, temperature)
        params = {n: p.detach() for n, p in zip(names, targets)}

        def g_and_hz(x: torch.Tensor, y: torch.Tensor, z: Tensors) -> tuple[Tensors, Tensors]:
            return jvp(lambda q: grad(floss)(q, x, y), (params,), (z,))

        per_batch = vmap(vmap(g_and_hz, in_dims=(None, None, 0)), in_dims=(0, 0, 0))
        sizes = [y.shape[0] for _, y in batches]
        chunks = chunk_batches(sizes, chunk_size, equal_sizes=True, max_batches=_max_batches(targets, 4 * probes))
        for chunk_idx in progress(chunks, desc=f"Hutchinson, {probes} probes per batch", unit="chunk"):
            nb = len(chunk_idx)
            zflat = stream.draw(nb * probes).reshape(nb, probes, stream.total)
            zs = stream.split(zflat)
            xs = torch.stack([batches[b][0] for b in chunk_idx])
            ys = torch.stack([batches[b][1] for b in chunk_idx])
            g, hz = per_batch(xs, ys, dict(zip(names, zs)))
            accumulate([z.flatten(0, 1) for z in zs], [hz[n].flatten(0, 1) for n in names])
            torch._foreach_add_(gsum, [g[n][:, 0].detach().sum(0) for n in names])
    else:
        for x, y in progress(batches, desc=f"Hutchinson, {probes} probes per batch", unit="batch"):
            loss = _chunk_loss(model, [(x, y)], loss_fn, temperature)
            grads = _grads(loss, targets, create_graph=True)
            torch._foreach_add_(gsum, [gb.detach() for gb in grads])
            live = [i for i, gb in enumerate(grads) if gb.requires_grad]
            if route == "probes" and probes > 1:
                zs = stream.split(stream.draw(probes))
                if live:
                    hz = torch.autograd.grad([grads[i] for i in live], targets, grad_outputs=[zs[i] for i in live],
                                             is_grads_batched=True, allow_unused=True)
                    accumulate(zs, hz)
                continue
            for k in range(probes):
                zs = stream.split(stream.draw(1)[0])
                if live:
                    hz = torch.autograd.grad([grads[i] for i in live], targets, grad_outputs=[zs[i] for i in live],
                                             retain_graph=k < probes - 1, allow_unused=True)
                    accumulate(zs, hz)
    M = len(batches) * probes
    diag = {n: s1[i] / M for i, n in enumerate(names)}
    if M > 1:
        var = {n: ((s2[i].double() - s1[i].double() ** 2 / M) / (M - 1)).clamp_min(0) for i, n in enumerate(names)}
        stderr = {n: (var[n] / M).sqrt().to(dtype) for n in names}
    else:
        stderr = {n: torch.full(t.shape, math.nan, device=device, dtype=dtype) for n, t in zip(names, targets)}
    mean_grad = {n: gsum[i] / len(batches) for i, n in enumerate(names)}
    return HutchinsonResult(diag, stderr, mean_grad, M)
