"""What a network costs: parameters and FLOPs of one forward pass, per layer and in total, dense and effective.

One shared counter for every run and every kind of pruning (issue 12, item 5)::

    from compressors.costs import count_costs
    costs = count_costs(model, torch.zeros(1, 3, 32, 32), masks=masks)        # unstructured masks
    costs = count_costs(model, example, compact=compact_model)                 # structured: the cut model
    costs.flops_dense, costs.flops_effective, costs.params_dense, costs.params_effective, costs.layers

**How a FLOP is counted.**  FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, never from
hand formulas: it counts **2 FLOPs per multiply-add** of the matrix products, convolutions and attention
kernels (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``convolution``, ``scaled_dot_product_attention``, ...)
of one forward pass over an example batch (whose batch size the caller chooses; runs use 1).
Element-wise operations, normalisation, activations, softmax, pooling and bias additions are not counted
(they are not in torch's FLOP registry), so the count is that of the layers' multiply-adds:
``2 * C_out * C_in/groups * k_h * k_w * H_out * W_out`` for a convolution, ``2 * n_in * n_out`` per
token for a Linear layer, ``2 * 2 * N^2 * d`` per head for the attention products ``q k^T`` and
``softmax(.) v`` (which have no weights: masks never reduce them).

**Per layer.**  FlopCounterMode attributes each operation to the modules whose ``forward`` is running;
a layer's FLOPs here are its *own*: those of the operations run directly in its ``forward``, not in a
sub-module's (so a ViT attention block's row holds its ``q k^T`` and ``softmax(.) v`` products while its
q/k/v Linear layers have rows of their own).  A layer's parameters are those it registers itself
(``recurse=False``); a parameter shared by several modules counts once, for the first.

**Effective cost.**

- *Unstructured masks* ``{param_name: bool tensor}``: parameters = the kept entries; FLOPs of a masked
  Conv/Linear layer = its FLOPs × the density of its weight, which is exact for the multiply-adds (every
  multiply-add of such a layer uses one weight entry, and each entry is used equally often).  Layers
  without a masked weight keep their dense FLOPs, and so do operations that read a masked weight from
  outside its module's ``forward`` (torchvision's ``MultiheadAttention`` reads ``out_proj.weight``
  itself): the effective count is then an upper bound.
- *Structured pruning*: the FLOPs and parameters of the compact model (the dense network with the
  removed channels cut out), counted by the same code; per layer matched by module name.

**Where it runs.**  On the meta device (``torch.func.functional_call`` with meta copies of the
parameters and buffers: no arithmetic, no copy of the model; ViT-B/16 at 224x224 takes ~0.1 s), and, for
a model whose forward cannot run on meta tensors, on the example batch on its own device under
``torch.no_grad`` in eval mode (train/eval modes restored).  Nothing is cached between calls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from compressors.base import PRUNABLE_TYPES

TOP = "(top level)"  # the row of operations run in the root module's own forward


@dataclass
class LayerCost:
    """One module's own parameters and FLOPs of one forward pass (see the module docstring)."""

    name: str
    type: str
    params: int
    params_effective: int
    flops: int
    flops_effective: int
    density: float | None = None   # kept fraction of its weight (masked layers only)


@dataclass
class Costs:
    """Totals and per-layer rows of one model on one example input."""

    params_dense: int
    params_effective: int
    flops_dense: int
    flops_effective: int
    input_shape: list[int]
    counted_on: str                                   # "meta" | "example batch"
    pruning: str                                      # "none" | "unstructured" | "structured"
    layers: list[LayerCost] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        """The four numbers every ``results.json`` holds."""
        return {"params_dense": self.params_dense, "params_effective": self.params_effective,
                "flops_dense": self.flops_dense, "flops_effective": self.flops_effective}

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["flop_convention"] = "2 per multiply-add (torch.utils.flop_counter), one forward pass"
        return out


def _meta_call(model: nn.Module, example: torch.Tensor) -> FlopCounterMode:
    state = {n: torch.empty_like(t, device="meta") for n, t in (*model.named_parameters(), *model.named_buffers())}
    counter = FlopCounterMode(display=False)
    with counter:
        functional_call(model, state, (example.to("meta"),))
    return counter


def _real_call(model: nn.Module, example: torch.Tensor) -> FlopCounterMode:
    modes = {m: m.training for m in model.modules()}
    device = next((t.device for t in model.parameters()), example.device)
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(example.to(device))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return counter


def own_flops(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, int], str]:
    """``({module name: FLOPs of its own operations}, where counted)`` of one forward pass of ``example``;
    the root module is ``""``.  See the module docstring for what is counted."""
    try:
        counter, where = _meta_call(model, example), "meta"
    except Exception:  # noqa: BLE001 - a forward that needs real tensors (data-dependent shapes, CPU constants)
        counter, where = _real_call(model, example), "example batch"
    root = type(model).__name__
    totals: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key[len(root) + 1:] if key.startswith(root + ".") else ("" if key == root else key)
        totals[name] = totals.get(name, 0) + int(sum(ops.values()))
    if "" not in totals:
        totals[""] = int(counter.get_total_flops())
    own = dict(totals)
    for name, flops in totals.items():  # subtract each module's total from its nearest counted ancestor
        if name == "":
            continue
        parent = name
        while parent:
            parent = parent.rpartition(".")[0]
            if parent in totals:
                break
        own[parent] -= flops
    return own, where


def _rows(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, LayerCost], str]:
    flops, where = own_flops(model, example)
    modules = dict(model.named_modules())
    params: dict[str, int] = {}
    for pname, tensor in model.named_parameters():  # shared parameters appear once, under their first name
        module = pname.rpartition(".")[0]
        params[module] = params.get(module, 0) + tensor.numel()
    rows: dict[str, LayerCost] = {}
    for name, module in modules.items():
        f, p = flops.get(name, 0), params.get(name, 0)
        if f or p:
            rows[name] = LayerCost(name or TOP, type(module).__name__, p, p, f, f)
    return rows, where


def count_costs(model: nn.Module, example: torch.Tensor, *, masks: Mapping[str, torch.Tensor] | None = None,
                compact: nn.Module | None = None) -> Costs:
    """Parameters and FLOPs of one forward pass of ``example`` through ``model``, dense and effective.

    ``masks`` (unstructured, ``{param_name: bool tensor}`` as in ``mask.pt``) make the effective count
    density-weighted; ``compact`` (structured pruning: the cut-down model, taking the same input) makes
    it the compact model's own count.  Without either, effective = dense.  See the module docstring."""
    if masks is not None and compact is not None:
        raise ValueError("count_costs: give masks (unstructured) or a compact model (structured), not both")
    rows, where = _rows(model, example)
    named = dict(model.named_parameters())
    pruning = "none"
    if masks:
        unknown = sorted(set(masks) - set(named))
        if unknown:
            raise KeyError(f"count_costs: masks name parameters the model does not have: {unknown[:5]}")
        pruning = "unstructured"
        modules = dict(model.named_modules())
        for pname, mask in masks.items():
            module, _, attr = pname.rpartition(".")
            row = rows.get(module)
            if row is None:
                continue
            kept = int(torch.count_nonzero(mask))
            row.params_effective -= mask.numel() - kept
            if attr == "weight" and isinstance(modules[module], PRUNABLE_TYPES):
                row.density = kept / mask.numel() if mask.numel() else 0.0
                row.flops_effective = round(row.flops * row.density)
    elif compact is not None:
        pruning = "structured"
        small, _ = _rows(compact, example)
        for name, row in rows.items():
            cut = small.pop(name, None)
            row.params_effective = cut.params if cut is not None else 0
            row.flops_effective = cut.flops if cut is not None else 0
        for name, cut in small.items():  # modules only the compact model has (e.g. a re-indexing layer)
            rows[name] = LayerCost(cut.name, cut.type, 0, cut.params, 0, cut.flops)
    layers = list(rows.values())
    return Costs(params_dense=sum(r.params for r in layers), params_effective=sum(r.params_effective for r in layers),
                 flops_dense=sum(r.flops for r in layers), flops_effective=sum(r.flops_effective for r in layers),
                 input_shape=list(example.shape), counted_on=where, pruning=pruning, layers=layers)


__all__ = ["Costs", "LayerCost", "count_costs", "own_flops"]
