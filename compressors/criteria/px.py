"""PX, Path eXclusion (Iurada, Ciccone and Tommasi, CVPR 2024, "Finding Lottery Tickets in Vision Models via
Data-driven Spectral Foresight Pruning"): an iterative criterion that keeps the weights carrying most of an
upper bound of the NTK's trace, written as the product of a data-independent path kernel and a data-dependent
path activation matrix.

Authors' code: iurada/px-ntk-pruning, ``lib/pruners.py`` (``PX.score``, ``Pruner._global_mask``) and
``train_classification.py`` (``Experiment.__init__``: the model in eval mode, ``rounds`` rounds, round k keeping
``weight_remaining_ratio ** (k / rounds)``); their launch scripts use 100 rounds.  This follows the newest
version of ``PX.score`` (commit ed6c40e, Feb. 2025: data squared into the activation-pattern copy, ones into
the path-kernel copy, score ``|∂R/∂θ²| · θ²``); earlier versions scored ``|∂R/∂θ² · θ² · 1| · θ²`` on the data
itself through separate no-activation model files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from compressors import register
from compressors.base import Compressor, ScoreMap, classifier_name
from compressors.rounds import BatchStream, Round, lineage_settings, round_sparsities, run_rounds
from utils.schema import option

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
# every way a network calls a ReLU: nn.ReLU and nn.LeakyReLU call the F functions; models may call the others
RELUS: frozenset[Callable[..., Any]] = frozenset({
    F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_,
    F.leaky_relu, F.leaky_relu_})


class ActivationPatterns(TorchFunctionMode):
    """Rewrites every ReLU (and leaky ReLU) call while active, whichever way the model calls it:

    - ``"record"``: the activation runs as usual and its on/off pattern ``x > 0`` is appended to ``patterns``
      (the authors' ``hook_activation``, which overrides ``F.relu``);
    - ``"replay"``: the input times the next recorded pattern, in call order (``apply_activation``);
    - ``"identity"``: the input unchanged (their ``lambda input, *args, **kwargs: input``).

    Other functions run unchanged (the authors override ``F.relu`` / ``F.leaky_relu`` only)."""

    def __init__(self, action: str, patterns: list[torch.Tensor]) -> None:
        super().__init__()
        self.action, self.patterns = action, patterns

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in RELUS:
            return func(*args, **kwargs)
        x = args[0]
        if self.action == "record":
            self.patterns.append(x.detach() > 0)
            return func(*args, **kwargs)
        if self.action == "replay":
            if not self.patterns:
                raise RuntimeError("px: the network called more activations than the recording pass did")
            return x * self.patterns.pop(0).to(x.dtype)
        return x


def path_states(model: nn.Module, names: list[str], masks: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The two copies of PX as ``functional_call`` states, and the path-kernel leaves ``p`` of the scored
    weights (the authors' ``pk_model`` and ``jvf_model``; the kernel state takes ``m ⊙ p`` for the scored
    weights at each forward, see :func:`px_gradient`):

    - path kernel: every parameter squared (``p = θ²``), the scored ones masked (``m ⊙ p``);
    - path activation: every parameter 1, the scored ones masked (``m ⊙ 1``);

    except the classifier (the last ``nn.Linear``) and normalisation layers, which keep their own parameters in
    both (the authors skip every state entry whose name contains ``'fc'`` or ``'bn'``).  Buffers are copies
    (the copies' BN layers use batch statistics and update only these)."""
    skip: set[str] = set()
    head = classifier_name(model)
    for mod_name, module in model.named_modules():
        if mod_name == head or isinstance(module, NORMS):
            prefix = f"{mod_name}." if mod_name else ""
            skip.update(prefix + n for n, _ in module.named_parameters(recurse=False))
    kernel: dict[str, torch.Tensor] = {}
    activation: dict[str, torch.Tensor] = {}
    leaves: dict[str, torch.Tensor] = {}
    for n, t in model.named_parameters():
        t = t.detach()
        kernel[n], activation[n] = (t, t) if n in skip else (t.square(), torch.ones_like(t))
    for n in names:
        leaves[n] = kernel[n].clone().requires_grad_(True)
        activation[n] = masks[n] * activation[n]
    for n, b in model.named_buffers():
        kernel[n], activation[n] = b.detach().clone(), b.detach().clone()
    return kernel, activation, leaves


def set_modes(model: nn.Module, norms_train: bool) -> None:
    """Eval mode everywhere; normalisation layers in train mode (batch statistics) when ``norms_train``."""
    model.eval()
    if norms_train:
        for module in model.modules():
            if isinstance(module, NORMS):
                module.train()


def px_gradient(model: nn.Module, names: list[str], masks: dict[str, torch.Tensor], batches: list
                ) -> dict[str, torch.Tensor]:
    """``Σ_b ∂R_b/∂p`` at ``p = θ²`` for one round, ``R_b = Σ z1 ⊙ z2`` over batch b:

    - ``z1 = f_act(x²)``: the path-activation copy (parameters 1) on the squared data, each ReLU replaced by the
      on/off pattern that the network ``m ⊙ θ`` (eval mode) has on the data ``x`` (no gradient);
    - ``z2 = f_kernel(1)``: the path-kernel copy (parameters squared, ReLUs removed) on an all-ones input of
      the batch's shape;

    both copies with batch-statistics BN (the authors' ``.train()``; their models have no dropout, which stays
    off here).  The model's own weights and buffers are never written."""
    kernel, activation, leaves = path_states(model, names, masks)
    params = dict(model.named_parameters())
    act_state = {n: masks[n] * params[n].detach() for n in names}
    total = {n: torch.zeros_like(params[n]) for n in names}
    for x, _ in batches:
        x = x.to(params[names[0]].device)
        patterns: list[torch.Tensor] = []
        with torch.no_grad():
            set_modes(model, norms_train=False)
            with ActivationPatterns("record", patterns):
                functional_call(model, act_state, (x,))
            set_modes(model, norms_train=True)
            with ActivationPatterns("replay", patterns):
                z1 = functional_call(model, activation, (x.square(),))
        if patterns:
            raise RuntimeError("px: the network called fewer activations than the recording pass did")
        with ActivationPatterns("identity", []):
            z2 = functional_call(model, {**kernel, **{n: masks[n] * leaves[n] for n in names}},
                                 (torch.ones_like(x),))
        grads = torch.autograd.grad((z1 * z2).sum(), [leaves[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                total[n] += g
    return total


@dataclass
class PXOptions:
    rounds: int = option(100, "pruning rounds n; round k keeps d^(k/n) of the weights, d = 1 - sparsity (the "
                              "authors' experiment_args 'rounds': 100 in every launch script)", min=1, max=100000)
    batches: Optional[int] = option(
        None, "mask batches per round; null: every mask batch in every round (the authors' newest PX.score "
              "takes its whole balanced subset, examples_per_class per class, each round); a number: that many "
              "fresh batches per round, a new pass over the mask data when one ends (earlier versions' "
              "batch_limit: 2 batches of 128 on CIFAR-10, 8 of 256 on Tiny-ImageNet)", min=1)
    rounds_select: Literal["exact", "kthvalue"] = option(
        "exact", "selection inside the rounds: 'exact' keeps round(d·N) of the weights the last round kept "
                 "(ties to the lower index); 'kthvalue' is the authors' _global_mask: every score at or below "
                 "the int((1 - d)·N)-th smallest is pruned, ties included; the final count is "
                 "compressor.kept_count's")


@register("px")
class PX(Compressor):
    """PX: ``s = θ² ⊙ |∂R/∂p|`` at ``p = θ²``, ``R = Σ_b Σ f_act(x_b²) ⊙ f_kernel(1)``: ``f_kernel`` is the
    network with squared parameters and no activations (the path kernel), ``f_act`` the network with
    parameters 1 whose ReLUs apply the on/off pattern of the real network on ``x_b`` (the path activation
    matrix); classifier and normalisation parameters keep their values in both (see :func:`path_states`,
    :func:`px_gradient`).  Pruned weights score 0.

    Applied over n rounds: round k scores the network under the mask of round k − 1 (every copy masked) and
    keeps the top d^(k/n) of the weights, the last round reaching d = 1 − sparsity (the authors' loop in
    ``train_classification.py``).  The mask data (``per_class_samples`` per class, the authors'
    class-balanced subset) is used whole in every round unless ``batches`` says otherwise."""

    Options = PXOptions
    iterative = True
    scopes = ("global",)

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> ScoreMap:
        o = self.options
        params = dict(model.named_parameters())
        first = params[names[0]]
        stream = BatchStream(mask_loader)

        def score(r: Round):
            """Round k: θ² ⊙ |Σ_b ∂R_b/∂p| under the masks of round k − 1 (0 for pruned weights)."""
            masks = {n: r.masks[n].to(first.dtype) for n in names}
            grads = px_gradient(model, names, masks, stream.take(o.batches))
            return {n: grads[n].abs() * params[n].detach().square() for n in names}

        masking, rule = lineage_settings(o.rounds_select)
        result = run_rounds(score, {n: params[n].shape for n in names}, round_sparsities(sparsity, o.rounds),
                            masking=masking, rule=rule, dtype=first.dtype, device=first.device,
                            desc=f"{self.name} rounds")
        return ScoreMap(result.scores, {"rounds": o.rounds, "rounds_done": result.rounds_done,
                                        "finite": result.finite})
