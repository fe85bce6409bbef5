"""NTK-SAP (Wang, Li and Sun, ICLR 2023, "NTK-SAP: Improving neural network pruning by aligning training
dynamics"): a data-free iterative criterion that keeps the weights whose removal changes the NTK's trace most,
estimated by finite differences of the output on Gaussian inputs over freshly sampled weights.

Authors' code: YiteWang/NTK-SAP, ``Pruners/pruners.py`` (``NTKSAP.score``, ``Pruner._global_mask``),
``prune.py`` (``prune_loop``: the rounds and their schedule), ``main.py`` (defaults) and
``Experiments/singleshot.py`` / ``Experiments/multishot.py`` (what the network trains from afterwards).
Their sparsity argument is a density: ``--compression c`` keeps 0.8^c of the weights, i.e.
``"sparsity": 1 - 0.8**c`` here (c = 10 keeps 10.7%, c = 18 keeps 1.8%).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from torch import nn
from torch.func import functional_call

from compressors import register
from compressors.base import Compressor, ScoreMap
from compressors.options import SeedOptions, estimator_generator
from compressors.rounds import Round, lineage_settings, round_sparsities, run_rounds
from utils.schema import option

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def noise_shapes(mask_loader: Iterable | None) -> list[tuple[int, ...]]:
    """The shape of every mask batch: NTK-SAP draws one Gaussian batch of that shape for each (the authors'
    ``torch.randn_like(data)``; the values of the data are never used)."""
    if mask_loader is None:
        raise ValueError("ntk_sap needs the input shape: pass any loader of (inputs, targets) as mask_loader "
                         "(one Gaussian batch of each batch's shape is drawn; no data value is used)")
    shapes = [tuple(x.shape) for x, _ in mask_loader]
    if not shapes:
        raise ValueError("the mask loader yielded no batch: pass a loader of (inputs, targets) batches")
    return shapes


def _rng_fork(device: torch.device):
    """Fork the global RNG of the CPU (and of ``device`` when it is a GPU), so the re-sampling leaves it alone."""
    if device.type == "cuda":
        return torch.random.fork_rng(devices=[device.index if device.index is not None
                                              else torch.cuda.current_device()])
    return torch.random.fork_rng(devices=[])


@torch.no_grad()
def resample(net: nn.Module, seed: int, device: torch.device) -> None:
    """Re-initialise ``net`` in place: every module's own ``reset_parameters()`` (PyTorch's default
    initialisation of Conv / Linear weights and biases; BN scales 1, shifts 0 and running statistics reset),
    drawn from ``torch.manual_seed(seed)`` on a forked global RNG.  The authors call their model's
    ``_initialize_weights()`` (Kaiming-normal weights, BN 1 / 0, biases left as they are)."""
    with _rng_fork(device):
        torch.manual_seed(seed)
        for module in net.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


@torch.no_grad()
def copy_weights(dst: nn.Module, src: nn.Module) -> None:
    """``dst`` takes ``src``'s parameters and buffers (the caller's own initial weights as one draw)."""
    for a, b in zip(dst.parameters(), src.parameters()):
        a.copy_(b)
    for a, b in zip(dst.buffers(), src.buffers()):
        a.copy_(b)


def finite_difference_gradient(net: nn.Module, names: list[str], masks: dict[str, torch.Tensor],
                               noise: torch.Tensor, delta: dict[str, torch.Tensor],
                               epsilon: float) -> list[torch.Tensor | None]:
    """One draw of NTK-SAP's objective and its gradient with respect to the masks:

    ``J = Σ_i ||f(x_i; m ⊙ θ) − f(x_i; m ⊙ (θ + ε·δ))||²``, ``x ~ N(0, I)`` (``noise``), ``δ ~ N(0, I)``
    (``delta``: the authors' ``epsilon * torch.randn_like(p)``, standard deviation ε),

    with ``θ`` the current weights of ``net`` (a re-sampled copy).  BN statistics: the running statistics are
    reset and set by one train-mode pass of ``x`` at momentum 1 (the batch's mean and unbiased variance),
    then both outputs are taken in eval mode with them (the authors' ``reset_BN``, ``momentum = 1.0``, a
    ``torch.no_grad()`` forward, ``model.eval()``).  ``masks`` are float leaves; returns ``∂J/∂m``."""
    params = dict(net.named_parameters())
    theta = {n: params[n].detach() for n in names}
    norms = [m for m in net.modules() if isinstance(m, BATCH_NORMS)]
    if norms:
        with torch.no_grad():
            for m in norms:
                m.reset_running_stats()
                m.momentum = 1.0
            net.train()
            functional_call(net, {n: masks[n] * theta[n] for n in names}, (noise,))
    net.eval()
    out = functional_call(net, {n: masks[n] * theta[n] for n in names}, (noise,))
    moved = functional_call(net, {n: masks[n] * (theta[n] + epsilon * delta[n]) for n in names}, (noise,))
    objective = torch.linalg.vector_norm(out - moved, dim=-1).square().sum()
    return list(torch.autograd.grad(objective, [masks[n] for n in names], allow_unused=True))


@dataclass
class NTKSAPOptions(SeedOptions):
    rounds: int = option(20, "pruning rounds T (the authors' --prune-epochs: 20 in their scripts/run.sh; "
                             "main.py's default is 1)", min=1, max=100000)
    resamples: int = option(1, "weight re-samplings R per round, each over every mask batch (the authors' "
                               "--ntksap_R: 1 by default, 5 in their CIFAR-10 script)", min=1, max=10000)
    epsilon: float = option(0.01, "standard deviation ε of the weight perturbation δθ = ε·N(0, I) (the "
                                  "authors' --ntksap_epsilon, default 0.01)", min=0, min_exclusive=True)
    schedule: Literal["exponential", "linear"] = option(
        "exponential", "density after round k: 'exponential' d^(k/T) (the authors' --compression-schedule "
                       "default) or 'linear' 1 - k(1 - d)/T; d = 1 - sparsity")
    rounds_select: Literal["exact", "kthvalue"] = option(
        "exact", "selection inside the rounds: 'exact' keeps round(d·N) of the weights the last round kept "
                 "(ties to the lower index); 'kthvalue' is the authors' _global_mask: every score at or below "
                 "the int((1 - d)·N)-th smallest is pruned, ties included; the final count is "
                 "compressor.kept_count's")
    final_weights: Literal["initial", "last_draw"] = option(
        "initial", "'initial': the mask goes on the model's own initial weights, which no round scores (the "
                   "paper; the authors' multishot script reloads them); 'last_draw': the authors' singleshot "
                   "script, which trains the weights of the last re-sampling: here the last draw of the last "
                   "round is the model's own weights")


@register("ntk_sap")
class NTKSAP(Compressor):
    """NTK-SAP: ``s = |∂J/∂m ⊙ m|`` summed over R re-sampled weights θ ~ P (each module's default
    initialisation) and every mask batch's shape of Gaussian inputs x, with
    ``J = Σ_i ||f(x_i; m ⊙ θ) − f(x_i; m ⊙ (θ + ε·δ))||²``, δ ~ N(0, I): the finite-difference estimate of the
    trace of the NTK, ``ε²·Tr Θ(x, x)``, averaged over initialisations and inputs (the paper's weight-agnostic,
    data-agnostic NTK-SAP saliency), pruned over T rounds.

    Round k (k = 1..T) scores the network under the mask of round k − 1 and keeps the top d^(k/T) of the
    weights (``schedule``, ``rounds_select``); each round draws fresh weights for every one of its
    R × (mask batches) evaluations, a fresh Gaussian input and a fresh perturbation each time, all from the
    criterion's generator (option ``seed``, else drawn from torch's global RNG, which the pipeline seeds from
    the run seed).  Pruned weights score 0.  The caller's model is never modified: the draws are made on a copy
    (``final_weights: "last_draw"``, the authors' single-shot behaviour, makes the last draw of the last round
    the model's own weights instead of a fresh one, so the network trains from the weights that draw scored).
    """

    Options = NTKSAPOptions
    needs_data = False
    iterative = True
    scopes = ("global",)

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> ScoreMap:
        o = self.options
        params = dict(model.named_parameters())
        first = params[names[0]]
        generator = estimator_generator(o.seed, first.device)
        shapes = noise_shapes(mask_loader)
        net = copy.deepcopy(model)  # every draw is made here; the caller's model is never touched
        draws = o.resamples * len(shapes)

        def score(r: Round):
            """Round k: ∂J/∂m summed over the round's draws, under the masks of round k − 1."""
            masks = {n: r.masks[n].to(first.dtype).requires_grad_(True) for n in names}
            total = {n: torch.zeros_like(params[n]) for n in names}
            for j in range(draws):
                seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
                if o.final_weights == "last_draw" and r.index == r.rounds and j == draws - 1:
                    copy_weights(net, model)
                else:
                    resample(net, seed, first.device)
                shape = shapes[j % len(shapes)]
                noise = torch.randn(shape, generator=generator, device=first.device, dtype=first.dtype)
                delta = {n: torch.randn(params[n].shape, generator=generator, device=first.device,
                                        dtype=first.dtype) for n in names}
                grads = finite_difference_gradient(net, names, masks, noise, delta, o.epsilon)
                for n, g in zip(names, grads):
                    if g is not None:
                        total[n] += g
            return {n: (total[n] * r.masks[n]).abs() for n in names}

        masking, rule = lineage_settings(o.rounds_select)
        result = run_rounds(score, {n: params[n].shape for n in names},
                            round_sparsities(sparsity, o.rounds, o.schedule), masking=masking, rule=rule,
                            dtype=first.dtype, device=first.device, desc=f"{self.name} rounds")
        return ScoreMap(result.scores, {"rounds": o.rounds, "rounds_done": result.rounds_done,
                                        "draws_per_round": draws, "finite": result.finite,
                                        "final_weights": o.final_weights})
