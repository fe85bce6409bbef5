"""ProsPr (Alizadeh et al., ICLR 2022, "Prospect Pruning: Finding Trainable Weights at Initialization using
Meta-Gradients"): the saliency of a weight is the meta-gradient of the loss after M unrolled SGD steps with
respect to its multiplicative mask.

Paper, Sec. 3 (the method), in this module's notation (the paper's text was not available to this work: no
equation numbers are quoted; the formulas are the method as the paper states it in words and as the authors'
code computes it):

- the mask multiplies the initial weights once: ``θ_0 = c ⊙ θ_init`` with ``c = 1``;
- M inner SGD steps: ``θ_{k+1} = θ_k − α ∇_θ L(θ_k; D_k)``, k = 0..M−1;
- the saliency: ``s = |∂L(θ_M; D_M) / ∂c|`` at ``c = 1``, by the chain rule
  ``∂L(θ_M)/∂c = ∇L(θ_M) · (∂θ_M/∂θ_{M−1}) ⋯ (∂θ_1/∂θ_0) · diag(θ_init)`` with
  ``∂θ_{k+1}/∂θ_k = I − α ∇²L(θ_k)`` (``meta_grad: "full"``, backpropagation through every step);
- the first-order approximation replaces every ``∂θ_{k+1}/∂θ_k`` by ``I``:
  ``∂L(θ_M)/∂c ≈ ∇L(θ_M) ⊙ θ_init`` (``meta_grad: "first_order"``; the authors compute it by treating each
  step's gradient as a constant, so with weight decay λ the factor ``(1 − αλ)^M`` stays, the same for every
  weight);
- the weights with the largest s are kept, in a single shot (no pruning rounds).

The reference is the authors' code, github.com/mil-ad/prospr: ``prospr/prospr.py`` (``prune``,
``functional_sgd``, ``compute_meta_grads``) run from ``cli.py`` / ``train.py`` (the script the README says
the paper's results used).  The defaults here are that command line's: ``--inner-steps 3``,
``--inner-lr 0.1``, ``--inner-momentum 0``, ``--meta-grads-mode full``, ``--new-data-in-inner False`` (every
inner step and the meta loss on the same batch).  ``prune()`` itself defaults to a new batch per step
(``new_data_in_inner=True``) and the README's example uses ``inner_lr=0.5, inner_momentum=0.9``: both are
options here (``same_batch: false``, ``inner_lr``, ``momentum``).  What else the authors' code does, and
how it is reproduced:

- the inner steps train *every* parameter (BN scales and shifts, biases, unmasked weights such as the
  classifier when it is not pruned), only the scored weights carry a mask;
- the network is in train mode (``net.train()``): BN normalises with the batch statistics (option
  ``mode: "eval"`` uses the running statistics instead); running statistics are updated on a copy only;
- no weight decay in the inner loop (``functional_sgd`` is called without it although training uses 5e-4;
  option ``weight_decay``); SGD momentum without dampening or Nesterov;
- with momentum, the first momentum buffer is ``clone(grad).detach()`` (copied from ``torch.optim.SGD``),
  which cuts the first step's gradient out of the full meta-gradient.  The paper's meta-gradient is the
  derivative through every step, so the default keeps that buffer in the graph (``momentum_init:
  "tracked"``); ``"detached"`` is the authors' behaviour (it only matters with ``momentum > 0`` and
  ``meta_grad: "full"``; measured on digits in docs/criteria.md#prospr: masks overlap 0.56-0.63, accuracy
  within the spread over seeds);
- the final selection is one global top-k of s over all masked weights, keeping ``ceil((1 − s) n)`` by
  ``torch.topk``; here ``compressor.kept_count`` decides (``round``: at most one weight apart), and the
  unstructured filter of the authors' code masks every Conv2d and Linear layer, the classifier included
  (``compressor.prune_classifier: true`` to match).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn
from torch.func import functional_call

from compressors import register
from compressors.base import Compressor, ScoreMap, Scores, model_device
from compressors.estimators import Batch, batches_on
from compressors.rounds import BatchStream
from utils.schema import option

Tensors = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ProsprOptions:
    inner_steps: int = option(3, "inner SGD steps M unrolled before the meta loss (authors' cli.py "
                                 "--inner-steps default 3)", min=1, max=1000)
    inner_lr: float = option(0.1, "learning rate α of the inner SGD steps (cli.py --inner-lr default 0.1; the "
                                  "README's example uses 0.5)", min=0, min_exclusive=True)
    momentum: float = option(0.0, "SGD momentum of the inner steps (cli.py --inner-momentum default 0; the "
                                  "README's example uses 0.9)", min=0, max=1, max_exclusive=True)
    weight_decay: float = option(0.0, "L2 weight decay of the inner steps (the authors' functional_sgd is "
                                      "called without it: 0)", min=0)
    same_batch: bool = option(True, "every inner step and the meta loss use the first mask batch (cli.py "
                                    "--new-data-in-inner default False); false: each step and the meta loss "
                                    "take the next mask batch, a new pass over the mask data when it ends "
                                    "(prune()'s default)")
    meta_grad: Literal["full", "first_order"] = option(
        "full", "'full': backpropagate through the M steps (second-order terms, create_graph); 'first_order': "
                "∇L(θ_M) ⊙ θ_init, each step's Jacobian taken as the identity (cli.py --meta-grads-mode "
                "default 'full')")
    mode: Literal["train", "eval"] = option(
        "train", "the network's mode in the inner steps and the meta loss: 'train' (BN batch statistics, "
                 "dropout on; the authors' net.train()) or 'eval' (BN running statistics)")
    momentum_init: Literal["tracked", "detached"] = option(
        "tracked", "the first momentum buffer: 'tracked' (the first gradient stays in the meta-gradient's "
                   "graph, as the paper's full derivative) or 'detached' (the authors' clone(grad).detach()); "
                   "matters only with momentum > 0 and meta_grad 'full'")


def sgd_step(theta: Tensors, grads: Tensors, buffers: dict[str, torch.Tensor | None], lr: float,
             momentum: float, weight_decay: float, detach_first: bool) -> tuple[Tensors, dict]:
    """One functional SGD step, the authors' ``functional_sgd`` (``torch.optim.SGD`` without dampening or
    Nesterov): ``d = g + λθ``; with momentum μ, ``b = d`` on the first step (``d.detach()`` when
    ``detach_first``) and ``b = μ b + d`` after, ``d = b``; ``θ ← θ − α d``.  Returns new tensors, so a
    caller differentiating through the step keeps every dependence (the paper's ``θ_{k+1}(θ_k)``)."""
    new_theta, new_buffers = {}, {}
    for n, p in theta.items():
        d = grads[n]
        if weight_decay:
            d = d + weight_decay * p
        if momentum:
            buf = buffers.get(n)
            buf = (d.detach() if detach_first else d) if buf is None else buf * momentum + d
            new_buffers[n] = buf
            d = buf
        new_theta[n] = p - lr * d
    return new_theta, new_buffers


def meta_gradient(model: nn.Module, names: Sequence[str], batches: Sequence[Batch], loss_fn: LossFn, *,
                  lr: float, momentum: float = 0.0, weight_decay: float = 0.0, method: str = "full",
                  detach_first: bool = False) -> tuple[Tensors, list[float]]:
    """``∂L(θ_M; D_M) / ∂c`` at ``c = 1`` for the parameters ``names`` (ProsPr, Sec. 3; see the module
    docstring), backpropagated through the unrolled steps: ``method="full"`` keeps each step's gradient in
    the graph (``create_graph=True``: the Hessian terms ``−α ∇²L(θ_k)`` of ``∂θ_{k+1}/∂θ_k``);
    ``"first_order"`` takes each step's gradient as a constant (the authors' ``create_graph=False``), which
    gives ``∇L(θ_M) ⊙ θ_init`` (times ``(1 − αλ)^M`` with weight decay λ; with momentum, what flows through
    its buffers).  Every parameter of ``model`` that requires grad is trained in the steps (the scored
    ones always); the forward is ``torch.func.functional_call`` on the fast weights, with copies of the
    buffers (the model's BN running statistics are not touched), in the model's current train/eval mode.

    The gradients are ``torch.autograd.grad`` calls, not nested ``torch.func.grad``: both give the same
    meta-gradient, but the nested transforms took 4.1x the peak memory of the full meta-gradient (about
    1860 vs 450 MiB above the model: ResNet20, one batch of 32 CIFAR-shaped samples, 3 steps, this
    project's 2-core CPU, two runs each).

    ``batches`` are ``D_0 .. D_M``: one per inner step, then the meta loss's (M = ``len(batches) − 1``).
    Returns the meta-gradients and the losses ``L(θ_0; D_0) .. L(θ_{M−1}; D_{M−1}), L(θ_M; D_M)``."""
    if method not in ("full", "first_order"):
        raise ValueError(f"method must be 'full' or 'first_order', got {method!r}")
    if len(batches) < 2:
        raise ValueError(f"meta_gradient needs at least one inner step and the meta batch, got {len(batches)} batches")
    params = dict(model.named_parameters())
    trained = list(dict.fromkeys([n for n, p in params.items() if p.requires_grad] + list(names)))
    frozen = {n: p.detach() for n, p in params.items() if n not in trained}
    state = {n: b.detach().clone() for n, b in model.named_buffers()}

    def loss_at(theta: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, {**frozen, **state, **theta}, (x,)), y)

    c = {n: torch.ones_like(params[n], requires_grad=True) for n in names}
    theta = {n: params[n].detach() * c[n] if n in c else params[n].detach().requires_grad_(True)
             for n in trained}  # θ_0 = c ⊙ θ_init; the unmasked parameters are leaves of their own
    momenta: dict[str, torch.Tensor | None] = {}
    losses = []
    for x, y in batches[:-1]:
        loss = loss_at(theta, x, y)
        g = torch.autograd.grad(loss, list(theta.values()), create_graph=method == "full", materialize_grads=True)
        losses.append(float(loss.detach()))
        theta, momenta = sgd_step(theta, dict(zip(theta, g)), momenta, lr, momentum, weight_decay, detach_first)
    x, y = batches[-1]
    final = loss_at(theta, x, y)
    meta = torch.autograd.grad(final, [c[n] for n in names], materialize_grads=True)
    return {n: m.detach() for n, m in zip(names, meta)}, [*losses, float(final.detach())]


@register("prospr")
class ProsPr(Compressor):
    """ProsPr: ``s = |∂L(θ_M; D_M) / ∂c|`` at ``c = 1``, ``θ_0 = c ⊙ θ_init``,
    ``θ_{k+1} = θ_k − α ∇L(θ_k; D_k)`` (M = ``inner_steps``, α = ``inner_lr``); the largest s are kept.

    ``meta_grad: "full"`` backpropagates through the M steps (Hessian terms included); ``"first_order"``
    is ``|∇L(θ_M) ⊙ θ_init|``.  The steps train every parameter of the network (only the scored weights are
    masked), in train mode by default (BN batch statistics), on the first mask batch every time
    (``same_batch``, the authors' command line) or on the mask batches in turn.  The mask batch is the
    authors' meta batch (their command line: 128 random training samples; here ``compressor.batch_size``).
    Diagnostics: the loss before each step and the meta loss (``losses``), the mask batches drawn
    (``mask_batches``: 1 with ``same_batch``, else M + 1, restarting the mask loader when it ends as
    :class:`compressors.rounds.BatchStream` does; a reshuffling loader reshuffles, as the authors' does).
    Defaults and the authors' other behaviours: module docstring.
    """

    Options = ProsprOptions

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> Scores:
        o = self.options
        model.train(o.mode == "train")
        stream = BatchStream(mask_loader)  # D_0..D_M: the first batch every time, or the next M + 1 in turn
        drawn = stream.take(1) if o.same_batch else stream.take(o.inner_steps + 1)
        distinct = batches_on(drawn, model_device(model))
        batches = distinct * (o.inner_steps + 1) if o.same_batch else distinct
        meta, losses = meta_gradient(model, names, batches, loss_fn, lr=o.inner_lr, momentum=o.momentum,
                                     weight_decay=o.weight_decay, method=o.meta_grad,
                                     detach_first=o.momentum_init == "detached")
        return ScoreMap({n: meta[n].abs() for n in names},
                        {"losses": losses, "meta_grad": o.meta_grad, "mask_batches": len(drawn)})
