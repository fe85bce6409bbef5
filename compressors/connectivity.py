"""Effective sparsity (Vysogorets & Kempe, JMLR 2023, "Connectivity Matters: Neural Network Pruning Through
the Lens of Effective Sparsity"): weights that no input-to-output path of kept weights runs through are as good
as pruned; the *effective* sparsity counts them as removed, beside the *direct* sparsity of the mask.

**Which weights are disconnected** (:func:`effective_masks`).  A kept weight ``W[i, j]`` of a layer is effective
when its input unit ``j`` is reachable from the network input and its output unit ``i`` reaches the network
output, through kept weights (for a convolution, at the pixel level: a weight that only ever sees zero padding
is inactive too).  It is computed as the authors' ``effective_masks_synflow`` (``effective_masks.py`` of
avysogorets/effective-sparsity): the network *linearised* (normalisation and activations removed, max pooling
replaced by average pooling, biases zero), its weights replaced by non-negative values on the kept entries, an
all-ones input, ``R = sum(output)``; a weight is effective iff its mask is 1 and ``∂R/∂W > 0`` (the authors:
``grad · |w_init| · mask ≠ 0``).  With non-negative weights and input, ``∂R/∂W[i, j]`` is a sum over positions
of (input-reachability of ``j``) × (output-reachability of ``i``), so it is positive exactly when a path exists.

One difference, on purpose: the authors propagate the products ``|w_init| · mask`` in float32, which
under- or overflows in deep or very sparse networks (their ``stabilizer_synflow`` rescaling, commented out,
tried to fix that).  Here the weights are the 0/1 mask and every Conv/Linear output is binarised (``> 0``) in
the forward pass and its gradient in the backward pass (:class:`_Reach`), so the values stay small integers:
the same zero pattern, exact at any depth and sparsity.  ``tests/test_connectivity.py`` checks it against the
authors' float procedure and their graph procedure (``effective_masks_denseonly``) on small networks.

**Which networks.**  Conv/Linear layers, normalisation (BatchNorm, InstanceNorm, GroupNorm, LayerNorm,
RMSNorm: removed; a masked norm scale multiplies its channel by the mask), the activations of
``torch.nn.modules.activation`` (removed), max/average pooling, residual additions, concatenation, padding,
reshapes.  Products of two activations (attention's ``softmax(q kᵀ) v``: ``scaled_dot_product_attention``,
``matmul``, ``bmm``, ``einsum``, ``softmax``, ``sigmoid``) have no path graph in the paper: such a network
raises :class:`UnsupportedNetwork`, as does any negative value met on the way (the rule above needs
non-negative values).

**Reaching an effective target** (:func:`effective_selection`): the authors' ``effective_correction_from_global_scores``
(``pruning.py``): a binary search over how many weights the score order keeps, for the fewest kept weights
whose effective count reaches the target count; see the function.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from compressors.base import PRUNABLE_TYPES
from compressors.masks import Scores, topk_mask


class UnsupportedNetwork(ValueError):
    """The network has an operation outside the path graph of Vysogorets & Kempe (see the module docstring)."""


_CHANNEL_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                                               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm)
_TRAILING_NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_MAX_POOLS = {nn.MaxPool1d: F.avg_pool1d, nn.MaxPool2d: F.avg_pool2d, nn.MaxPool3d: F.avg_pool3d}
_ADAPTIVE_MAX_POOLS = {nn.AdaptiveMaxPool1d: F.adaptive_avg_pool1d, nn.AdaptiveMaxPool2d: F.adaptive_avg_pool2d,
                       nn.AdaptiveMaxPool3d: F.adaptive_avg_pool3d}
# operations that multiply activations together or squash them away from zero: no path graph
_REFUSED = {F.scaled_dot_product_attention: "scaled_dot_product_attention", torch.matmul: "matmul",
            torch.Tensor.matmul: "matmul", torch.Tensor.__matmul__: "matmul", torch.bmm: "bmm",
            torch.Tensor.bmm: "bmm", torch.einsum: "einsum", torch.softmax: "softmax", F.softmax: "softmax",
            torch.Tensor.softmax: "softmax", torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid"}


class _Refuse(TorchFunctionMode):
    """Raise :class:`UnsupportedNetwork` on the operations of :data:`_REFUSED`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        if func in _REFUSED:
            raise UnsupportedNetwork(f"the network calls {_REFUSED[func]}, a product of activations (attention) "
                                     "or a gate, which has no input-to-output path graph (Vysogorets & Kempe define "
                                     "effective sparsity for feed-forward Conv/Linear networks)")
        return func(*args, **(kwargs or {}))


class _Reach(torch.autograd.Function):
    """Forward: ``1[x > 0]`` (reachable from the input); backward: ``1[g > 0]`` (reaches the output).  Both
    must be non-negative in a linearised network with non-negative weights; anything else is refused."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if bool((x < 0).any()):
            raise UnsupportedNetwork("a negative activation in the linearised network (all-ones input, "
                                     "non-negative weights): the network has an operation outside the path graph")
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if bool((grad < 0).any()):
            raise UnsupportedNetwork("a negative gradient in the linearised network: the network has an operation "
                                     "outside the path graph")
        return (grad > 0).to(grad.dtype)


def _identity(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return x


def _linearised_forward(module: nn.Module) -> Callable[..., torch.Tensor] | None:
    """The forward that replaces ``module`` in the probe, or None to keep its own."""
    if isinstance(module, _CHANNEL_NORMS):
        if getattr(module, "weight", None) is None:
            return _identity

        def channel_scale(x: torch.Tensor) -> torch.Tensor:
            return x * module.weight.reshape(1, -1, *([1] * (x.dim() - 2)))
        return channel_scale
    if isinstance(module, _TRAILING_NORMS):
        return _identity if getattr(module, "weight", None) is None else (lambda x: x * module.weight)
    if isinstance(module, nn.LocalResponseNorm):
        return _identity
    for cls, avg in _MAX_POOLS.items():
        if isinstance(module, cls):
            dilation = module.dilation if isinstance(module.dilation, tuple) else (module.dilation,)
            if any(d != 1 for d in dilation) or module.return_indices:
                raise UnsupportedNetwork(f"{type(module).__name__} with dilation or return_indices")
            return lambda x, m=module, f=avg: f(x, m.kernel_size, m.stride, m.padding, m.ceil_mode)
    for cls, avg in _ADAPTIVE_MAX_POOLS.items():
        if isinstance(module, cls):
            if module.return_indices:
                raise UnsupportedNetwork(f"{type(module).__name__} with return_indices")
            return lambda x, m=module, f=avg: f(x, m.output_size)
    if isinstance(module, nn.MultiheadAttention):
        raise UnsupportedNetwork("nn.MultiheadAttention (attention has no input-to-output path graph)")
    if type(module).__module__ == "torch.nn.modules.activation":
        return _identity
    return None


@contextmanager
def _linearised(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode with normalisation and activations removed, max pooling averaged and every
    Conv/Linear output passed through :class:`_Reach`; everything restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    replaced: list[nn.Module] = []
    hooks = []
    try:
        model.eval()
        for module in model.modules():
            forward = _linearised_forward(module)
            if forward is not None:
                module.forward = forward  # an instance attribute shadows the class's forward
                replaced.append(module)
            elif isinstance(module, PRUNABLE_TYPES):
                hooks.append(module.register_forward_hook(lambda _m, _i, out: _Reach.apply(out)))
        yield
    finally:
        for h in hooks:
            h.remove()
        for module in replaced:
            del module.forward
        for m, training in modes.items():
            m.train(training)


def _probe_values(model: nn.Module, masks: Scores, device: torch.device) -> dict[str, torch.Tensor]:
    """The parameters of the linearised network: masked tensors -> their 0/1 mask; other Conv/Linear weights ->
    1 where non-zero; other norm scales -> 1; everything else (biases, embeddings, ...) -> 0."""
    values: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{attr}" if mod_name else attr
            if name in values:
                continue
            if name in masks:
                v = masks[name].to(device=device, dtype=torch.float32)
            elif attr == "weight" and isinstance(module, PRUNABLE_TYPES):
                v = (p.detach() != 0).to(device=device, dtype=torch.float32)
            elif attr == "weight" and isinstance(module, _CHANNEL_NORMS + _TRAILING_NORMS):
                v = torch.ones(p.shape, device=device, dtype=torch.float32)
            else:
                v = torch.zeros(p.shape, device=device, dtype=torch.float32)
            values[name] = v.clone().requires_grad_(name in masks)
    return values


def effective_masks(model: nn.Module, masks: Scores, input_shape: Sequence[int]) -> Scores:
    """The masks with every disconnected kept entry removed (see the module docstring); same keys, shapes,
    dtypes and devices as ``masks`` (a parameter name -> 0/1 tensor for any subset of the model's parameters).
    ``input_shape`` is one example's shape, e.g. ``(3, 32, 32)``.  Raises :class:`UnsupportedNetwork` for a
    network outside the path graph.  The model is left as it was (parameters, buffers, modes)."""
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise KeyError(f"masks name tensors that are not parameters of the model: {', '.join(unknown[:5])}")
    if not masks:
        return {}
    device = next(iter(params.values())).device
    values = _probe_values(model, masks, device)
    buffers = {n: b for n, b in model.named_buffers()}
    x = torch.ones(1, *input_shape, device=device, dtype=torch.float32)
    names = list(masks)
    with torch.enable_grad(), _linearised(model):
        with _Refuse():
            out = functional_call(model, {**values, **buffers}, (x,))
        if not isinstance(out, torch.Tensor):
            raise UnsupportedNetwork(f"the network returns a {type(out).__name__}, not one tensor")
        if bool((out < 0).any()):
            raise UnsupportedNetwork("a negative output in the linearised network")
        grads = torch.autograd.grad(out.sum(), [values[n] for n in names], allow_unused=True)
    out_masks: Scores = {}
    for n, g in zip(names, grads):
        m = masks[n]
        reach = torch.zeros(m.shape, dtype=torch.bool, device=m.device) if g is None else (g > 0).to(m.device)
        out_masks[n] = (m.bool() & reach).to(m.dtype)
    return out_masks


@dataclass
class Connectivity:
    """Direct and effective counts of a set of masks (what ``results.json`` records)."""

    total: int
    kept: int
    effective_kept: int
    layer_effective_density: dict[str, float]

    @property
    def direct_sparsity(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0

    @property
    def effective_sparsity(self) -> float:
        return 1.0 - self.effective_kept / self.total if self.total else 0.0

    def record(self) -> dict[str, Any]:
        """The ``results.json`` keys: ``effective_sparsity``, ``effective_kept_parameters``,
        ``disconnected_parameters`` (kept but inactive) and ``layer_effective_density``."""
        return {"effective_sparsity": self.effective_sparsity, "effective_kept_parameters": self.effective_kept,
                "disconnected_parameters": self.kept - self.effective_kept,
                "layer_effective_density": self.layer_effective_density}


def connectivity(model: nn.Module, masks: Scores, input_shape: Sequence[int]) -> Connectivity:
    """Counts of ``masks`` and of their :func:`effective_masks`."""
    eff = effective_masks(model, masks, input_shape)
    return Connectivity(total=sum(m.numel() for m in masks.values()),
                        kept=_count(masks), effective_kept=_count(eff),
                        layer_effective_density={n: float(torch.count_nonzero(m)) / max(m.numel(), 1)
                                                 for n, m in eff.items()})


def effective_selection(select_kept: Callable[[int], Scores], effective: Callable[[Scores], Scores],
                        target_kept: int, available: int) -> tuple[Scores, dict[str, Any]]:
    """Masks whose *effective* kept count reaches ``target_kept``: Vysogorets & Kempe's
    ``effective_correction_from_global_scores`` (``pruning.py``), a binary search over the number of weights
    kept in score order.

    ``select_kept(k)`` gives the direct masks keeping ``k`` weights in score order (nested: a larger ``k`` keeps
    a superset, so the effective count grows with ``k``); ``effective`` gives their effective masks;
    ``available`` is the most weights that may be kept (the remaining ones).  The search finds the smallest
    ``k`` in ``[target_kept, available]`` whose effective count is at least ``target_kept`` (the authors: the
    most pruned weights whose effective sparsity is at most the target), i.e. the disconnected weights are
    removed and their budget re-filled from the next best scores until the target is met; the returned masks
    are the *effective* masks at that ``k`` (the authors return the direct masks, whose disconnected weights
    are inactive anyway).  Their effective count can exceed ``target_kept`` by the weights one more kept
    weight reconnects.  When even ``available`` does not reach the target, the effective masks at
    ``available`` are returned and the record says ``reached: false``."""
    probes = 0

    def probe(k: int) -> tuple[Scores, int, int]:
        nonlocal probes
        probes += 1
        direct = select_kept(k)
        eff = effective(direct)
        return eff, _count(direct), _count(eff)

    target_kept = min(target_kept, available)
    best, direct, count = probe(target_kept)
    if count < target_kept:
        lo, hi = target_kept, available
        best, direct, count = probe(hi)
        if count < target_kept:
            return best, {"reached": False, "direct_kept": direct, "effective_kept": count,
                          "target_kept": target_kept, "probes": probes}
        while hi - lo > 1:  # invariant: effective count at lo < target_kept <= effective count at hi
            mid = (lo + hi) // 2
            eff, d, c = probe(mid)
            if c >= target_kept:
                hi, best, direct, count = mid, eff, d, c
            else:
                lo = mid
    return best, {"reached": True, "direct_kept": direct, "effective_kept": count, "target_kept": target_kept,
                  "probes": probes}


def _count(masks: Scores) -> int:
    return int(sum(int(torch.count_nonzero(m)) for m in masks.values()))


def with_min_density(scores: Scores, masks: Scores, allowed: Scores, min_density: float) -> Scores:
    """``masks`` (kept count K) with every tensor holding at least ``ceil(min_density · n)`` of its weights
    (at most the ``allowed`` ones): a tensor below it gets its top-scored allowed weights up to that count, and
    the weights it adds are taken from the lowest-scored kept weights of the other tensors, never below their
    own minimum, so that the total stays exactly K.  Equivalently: the top ``ceil(min_density · n)`` allowed
    weights of every tensor are fixed and the rest of the budget goes to the best remaining scores globally
    (ties to the lower index, in the order of ``scores``).  ``allowed`` is the mask of weights not pruned
    before (iterative pruning); a tensor already above its minimum is only changed where the budget is
    taken."""
    names = list(masks)
    total = _count(masks)
    device = next(iter(scores.values())).device
    floors, fixed = {}, {}
    for n in names:
        ok = allowed[n].to(device).bool().reshape(-1)
        need = min(math.ceil(min_density * ok.numel() - 1e-9), int(torch.count_nonzero(ok)))
        floors[n] = need
        ranked = torch.where(ok, torch.nan_to_num(scores[n].detach().double().reshape(-1).to(device), nan=-1e300),
                             torch.tensor(float("-inf"), dtype=torch.float64, device=device))
        fixed[n] = topk_mask(ranked, need)
    if sum(floors.values()) > total:
        raise ValueError(f"min_layer_density {min_density:g} needs {sum(floors.values()):,} kept weights across "
                         f"{len(names)} tensors, more than the {total:,} the sparsity keeps; valid: a smaller "
                         "min_layer_density or a lower sparsity")
    if all(int(torch.count_nonzero(masks[n])) >= floors[n] for n in names):
        return masks
    rest = []
    for n in names:
        ok = allowed[n].to(device).bool().reshape(-1) & ~fixed[n]
        s = torch.nan_to_num(scores[n].detach().double().reshape(-1).to(device), nan=-1e300)
        rest.append(torch.where(ok, s, torch.tensor(float("-inf"), dtype=torch.float64, device=device)))
    flat = torch.cat(rest)
    extra = topk_mask(flat, total - sum(floors.values()))
    out, offset = {}, 0
    for n in names:
        size = masks[n].numel()
        keep = fixed[n] | extra[offset:offset + size]
        out[n] = keep.reshape(masks[n].shape).to(masks[n].device, masks[n].dtype)
        offset += size
    return out
