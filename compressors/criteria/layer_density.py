"""Layer-density baselines: a density for every prunable tensor, random weights inside each.

- ``uniform``: the same density ``1 - s`` in every tensor;
- ``erk``: Erdős–Rényi-Kernel (Evci et al. 2020, "Rigging the Lottery", Sec. 3): the density of a tensor
  of shape ``(n_out, n_in, k_h, k_w)`` is proportional to ``(n_out + n_in + k_h + k_w) / (n_out·n_in·k_h·k_w)``
  (for a Linear layer ``(n_out + n_in) / (n_out·n_in)``), scaled so that the whole network keeps ``1 - s``;
  a tensor whose density would exceed 1 is kept dense and the excess is redistributed over the others;
- ``er``: Erdős–Rényi (Mocanu et al. 2018; Liu et al. 2022): density ``∝ (n_out + n_in) / (n_out·n_in)``
  for Linear and Conv tensors alike (channels only, no kernel dims), capped and redistributed as ``erk``;
- ``igq``: Ideal Gas Quotas (Vysogorets & Kempe 2023): density ``1 / (1 + F·n_l)`` for a tensor of
  ``n_l`` weights, the force F found by the authors' bisection;
- ``smart_ratio``: Smart-Ratio (Su et al. 2020): keep-ratios ``∝ (L - l + 1)² + (L - l + 1)`` over the
  Conv layers (l = 1..L, every Conv/Linear layer of the model counted), Linear layers at a fixed 0.3;
- ``uniform_plus``: uniform+ (Gale et al. 2019): the first layer dense, the classifier at least 20 %
  dense, every other tensor the same density.

Kept counts are exact: the per-tensor counts add up to the global count of :func:`compressors.select`
(largest remainders, ties to the earlier tensor).  The returned scores are the masks themselves (1 kept,
0 pruned), so the global top-k keeps exactly them; a per-layer top-k would not, so these criteria accept
``compressor.mask: "global"`` only.  A target that a rule's constraints cannot meet (a dense first layer
larger than the budget, fixed Linear keep-ratios that leave nothing or too much for the rest) is a
``ValueError`` naming the rule, the sparsity and the valid range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence

import torch
from torch import nn

from compressors import register
from compressors.base import PRUNABLE_TYPES, Compressor, ScoreMap, classifier_name
from compressors.masks import kept_count, topk_mask
from compressors.options import SeedOptions, estimator_generator
from utils.schema import option


def distribute(sizes: Sequence[int], raw: Sequence[float], budget: int) -> list[int]:
    """``budget`` kept entries spread over tensors of ``sizes`` in proportion to ``raw`` density x size; a
    tensor whose density would reach 1 is kept dense and the rest share what is left (repeated until none
    does).  Integer counts by largest remainders, ties to the earlier tensor; they add up to ``budget``."""
    if not 0 <= budget <= sum(sizes):
        raise ValueError(f"cannot keep {budget} of {sum(sizes)} entries")
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(sizes)) if i not in dense]
        left = budget - sum(sizes[i] for i in dense)
        weight = sum(raw[i] * sizes[i] for i in free)
        scale = left / weight if weight > 0 else 0.0
        over = {i for i in free if scale * raw[i] >= 1.0}
        if not over:
            break
        dense |= over
    exact = [float(sizes[i]) if i in dense else scale * raw[i] * sizes[i] for i in range(len(sizes))]
    counts = [min(math.floor(e), s) for e, s in zip(exact, sizes)]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:budget - sum(counts)]:
        counts[i] += 1
    return counts


def layer_kept_counts(sizes: Sequence[int], raw: Sequence[float], sparsity: float) -> list[int]:
    """Kept entries per tensor for densities proportional to ``raw`` (capped at 1, the excess
    redistributed), adding up exactly to ``kept_count(sum(sizes), sparsity)``."""
    return distribute(sizes, raw, kept_count(sum(sizes), sparsity))


def layer_positions(model: nn.Module, names: Sequence[str]) -> tuple[list[int], list[nn.Module | None], int]:
    """For each of ``names``: the 0-based position of its layer among the model's Conv/Linear modules in
    registration order, and that module; with the number L of those modules.  A parameter outside a
    Conv/Linear module (a BN scale under ``compressor.prunable: "official_names"``) belongs to the layer
    registered before it (position 0 and no module if there is none)."""
    position, owner, index, layers = {}, {}, -1, 0
    for mod_name, module in model.named_modules():
        is_layer = isinstance(module, PRUNABLE_TYPES)
        if is_layer:
            index, layers = index + 1, layers + 1
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if full not in position:
                position[full], owner[full] = max(index, 0), (module if is_layer else None)
    return [position[n] for n in names], [owner[n] for n in names], layers


def igq_densities(sizes: Sequence[int], sparsity: float, max_steps: int = 1000) -> list[float]:
    """Ideal Gas Quotas (Vysogorets & Kempe 2023; the authors' ``igq_quotas`` /
    ``bs_force_igq`` in ``pruning.py``): layer l is a cylinder of length ``n_l`` and area ``1/n_l``
    compressed by a force F to length ``n_l / (F·n_l + 1)``, so its density is ``1 / (F·n_l + 1)``.  F is
    found by their bisection on ``[0, 1e20]``: each step first returns the densities at ``f_low`` or
    ``f_high`` if the overall sparsity there is within ``1/N`` of the target (N = all weights), else moves
    the end on the side of the midpoint.  Their recursion is a loop here (``max_steps``, Python's default
    recursion limit, bounds it)."""
    total = sum(sizes)
    tolerance, f_low, f_high = 1.0 / total, 0.0, 1e20
    areas = [1.0 / n for n in sizes]

    def lengths(force: float) -> list[float]:
        return [n / (force / a + 1) for n, a in zip(sizes, areas)]

    for _ in range(max_steps):
        for force in (f_low, f_high):
            kept = lengths(force)
            if abs(1 - sum(kept) / total - sparsity) < tolerance:
                return [length / n for length, n in zip(kept, sizes)]
        force = float(f_low + f_high) / 2
        overall = 1 - sum(lengths(force)) / total
        f_low = force if overall < sparsity else f_low
        f_high = force if overall > sparsity else f_high
    raise ValueError(f"igq: the bisection on the force did not reach sparsity {sparsity} within 1/{total} in "
                     f"{max_steps} steps")


class _LayerDensity(Compressor):
    """Base: ``kept_counts`` gives each tensor's kept count (default: densities ``∝ raw_density(shape)``,
    capped and redistributed); the weights kept inside a tensor are drawn at random (seeded)."""

    Options = SeedOptions
    needs_data = False
    iterative = True
    scopes: ClassVar[tuple[str, ...]] = ("global",)
    global_only_because: ClassVar[str] = "it sets its own density per weight tensor"

    def raw_density(self, shape: torch.Size) -> float:  # pragma: no cover - abstract
        raise NotImplementedError("abstract: layer-density baselines implement raw_density() or kept_counts()")

    def kept_counts(self, model: nn.Module, names: list[str], shapes: list[torch.Size], sparsity: float) -> list[int]:
        return layer_kept_counts([math.prod(s) for s in shapes], [self.raw_density(s) for s in shapes], sparsity)

    def compute(self, model, names, mask_loader, loss_fn, sparsity) -> ScoreMap:
        params = dict(model.named_parameters())
        shapes = [params[n].shape for n in names]
        counts = self.kept_counts(model, names, shapes, sparsity)
        gen = estimator_generator(self.options.seed, torch.device("cpu"))
        scores = {n: topk_mask(torch.rand(math.prod(s), generator=gen), c).reshape(s).float()
                  for n, s, c in zip(names, shapes, counts)}
        return ScoreMap(scores, {"layer_density": {n: c / math.prod(s) for n, s, c in zip(names, shapes, counts)}})


@register("uniform")
class Uniform(_LayerDensity):
    """Uniform layer density: every prunable tensor keeps ``1 - s`` of its weights, chosen at random."""

    def raw_density(self, shape: torch.Size) -> float:
        return 1.0


@register("erk")
class ERK(_LayerDensity):
    """Erdős–Rényi-Kernel densities ``∝ Σ dims / Π dims`` (Evci et al. 2020), random weights inside."""

    def raw_density(self, shape: torch.Size) -> float:
        return sum(shape) / math.prod(shape)


@register("er")
class ER(_LayerDensity):
    """Erdős–Rényi densities ``∝ (n_out + n_in) / (n_out·n_in)`` (Mocanu et al. 2018; as Liu et al. 2022, Sec. 3,
    restate it), n = the channels of a Conv tensor: the kernel size does not enter, exactly as the
    authors' ``'ER'`` branch of ``Masking.init`` (VITA-Group/Random_Pruning ``CIFAR/sparselearning/core.py``:
    ``sum(shape[:2]) / prod(shape[:2])``).  Scaled to keep ``1 - s`` of the prunable weights; a tensor that
    would exceed density 1 is dense and the others share the rest (their epsilon loop).  A 1-D tensor
    (a bias under ``prune_biases``) has raw density 1."""

    def raw_density(self, shape: torch.Size) -> float:
        return sum(shape[:2]) / math.prod(shape[:2])


@register("igq")
class IGQ(_LayerDensity):
    """Ideal Gas Quotas (Vysogorets & Kempe, JMLR 2023): density ``1 / (F·n_l + 1)`` for a tensor of ``n_l``
    weights, F from the authors' bisection (:func:`igq_densities`); the densities never exceed 1.  Their
    code prunes ``int(s_l·n_l)`` weights per layer, which misses the global count by up to one weight per
    layer; here the counts are the densities rescaled to the exact global count (largest remainders)."""

    def kept_counts(self, model, names, shapes, sparsity):
        sizes = [math.prod(s) for s in shapes]
        return distribute(sizes, igq_densities(sizes, sparsity), kept_count(sum(sizes), sparsity))


@dataclass
class SmartRatioOptions(SeedOptions):
    linear_keep_ratio: float = option(0.3, "keep-ratio of every Linear layer (the authors' --linear_keep_ratio "
                                           "default)", min=0, max=1, min_exclusive=True)
    profile: Literal["quadratic", "linear", "cubic", "ascending"] = option(
        "quadratic", "keep-ratio of Conv layer l of L, k = L - l + 1: 'quadratic' k² + k (Smart-Ratio), "
                     "'linear' k, 'cubic' k³, 'ascending' l² + l (the authors' --linear_decay / --cubic / "
                     "--ascend ablations)")
    divide_by_position_squared: bool = option(
        False, "divide layer l's keep-ratio by l² as the authors' code does for every --arch except 'resnet' "
               "(their VGG runs); false: their ResNet rule")


PROFILES = {"quadratic": lambda k, n: k ** 2 + k, "linear": lambda k, n: k, "cubic": lambda k, n: k ** 3,
            "ascending": lambda k, n: (n - k + 1) ** 2 + (n - k + 1)}


@register("smart_ratio")
class SmartRatio(_LayerDensity):
    """Smart-Ratio (Su et al., NeurIPS 2020, their "random tickets"; the authors' ``SmartRatio`` in
    JingtongSu/sanity-checking-pruning ``pruner/SmartRatio.py``).  The model's Conv/Linear layers in order,
    l = 1..L (every layer counted, prunable or not): a Linear layer keeps ``int(linear_keep_ratio·n_l)``
    weights; a Conv layer keeps a share of the rest of the budget ``∝ p_l·n_l`` with
    ``p_l = (L - l + 1)² + (L - l + 1)`` (``profile``; ``/ l²`` with ``divide_by_position_squared``).  A
    Conv layer whose keep-ratio would exceed 1 is dense and the others share the excess; the authors' code
    means to pass it on to the next layers, but its loop stops at the first module (the network itself), so
    their excess is lost and the network ends below the target (measured in docs/criteria.md)."""

    Options = SmartRatioOptions

    def kept_counts(self, model, names, shapes, sparsity):
        sizes = [math.prod(s) for s in shapes]
        positions, owners, layers = layer_positions(model, names)
        budget = kept_count(sum(sizes), sparsity)
        linear = [isinstance(m, nn.Linear) for m in owners]
        fixed = sum(math.floor(self.options.linear_keep_ratio * n) for n, lin in zip(sizes, linear) if lin)
        convs = [i for i in range(len(names)) if not linear[i]]
        room = sum(sizes[i] for i in convs)
        if not 0 <= budget - fixed <= room:
            raise ValueError(
                f"smart_ratio: sparsity {sparsity} cannot be met: the Linear layers at keep-ratio "
                f"{self.options.linear_keep_ratio} keep {fixed} weights, the Conv layers hold {room}, the budget "
                f"is {budget} of {sum(sizes)}; valid: sparsity from {1 - (fixed + room) / sum(sizes):.6g} to "
                f"{1 - fixed / sum(sizes):.6g}")
        profile = PROFILES[self.options.profile]
        raw = []
        for i in convs:
            ratio = profile(layers - positions[i], layers)
            raw.append(ratio / (positions[i] + 1) ** 2 if self.options.divide_by_position_squared else ratio)
        shares = distribute([sizes[i] for i in convs], raw, budget - fixed)
        counts = [math.floor(self.options.linear_keep_ratio * n) if lin else 0 for n, lin in zip(sizes, linear)]
        for i, c in zip(convs, shares):
            counts[i] = c
        return counts


@dataclass
class UniformPlusOptions(SeedOptions):
    classifier_min_density: float = option(0.2, "least density of the classifier (Gale et al. 2019: at most 80 "
                                                "% sparse; 0.2 in both authors' codes)", min=0, max=1)
    classifier_rule: Literal["rest", "target"] = option(
        "rest", "the classifier's density: 'rest' max(density of the other tensors, minimum), uniform over "
                "classifier and rest until the minimum binds (Vysogorets & Kempe's uniform_plus_quotas); "
                "'target' max(1 - s, minimum), the rest taking what is left (Liu et al.'s Random_Pruning code)")


@register("uniform_plus")
class UniformPlus(_LayerDensity):
    """uniform+ (Gale et al. 2019, "The State of Sparsity"; as described by Lee et al. 2021 and Liu et
    al. 2022): the first layer (the first Conv/Linear module of the model) dense, the classifier (last
    Linear) at density ``max(d, classifier_min_density)``, every other prunable tensor at the one density
    that makes the total exact.  ``classifier_rule`` says what d is ('rest': the other tensors' density, as
    avysogorets/effective-sparsity ``uniform_plus_quotas``; 'target': ``1 - s``, as VITA-Group/Random_Pruning
    ``Masking.init('uniform_plus')``, whose other tensors get ``(D·N - n_first - 0.2·n_fc) / N`` with N all
    weights, so its total misses the target; here they take exactly what is left).  A first layer or
    classifier outside the prunable set (``compressor.prune_classifier`` false, the default) is dense
    anyway; the rule then shares the budget over the prunable tensors."""

    Options = UniformPlusOptions

    def kept_counts(self, model, names, shapes, sparsity):
        sizes = [math.prod(s) for s in shapes]
        positions, owners, _ = layer_positions(model, names)
        head = classifier_name(model)
        head_module = dict(model.named_modules()).get(head) if head is not None else None
        first = [i for i in range(len(names)) if positions[i] == 0 and owners[i] is not None]
        head_ids = [i for i in range(len(names)) if i not in first and head_module is not None
                    and owners[i] is head_module]
        rest = [i for i in range(len(names)) if i not in first and i not in head_ids]
        budget, n_first = kept_count(sum(sizes), sparsity), sum(sizes[i] for i in first)
        n_head, n_rest = sum(sizes[i] for i in head_ids), sum(sizes[i] for i in rest)
        left = budget - n_first
        floor = math.ceil(self.options.classifier_min_density * n_head - 1e-9)
        counts = [0] * len(names)
        for i in first:
            counts[i] = sizes[i]

        def fail(why: str) -> ValueError:
            return ValueError(f"uniform_plus: sparsity {sparsity} cannot be met: {why}; the budget is {budget} of "
                              f"{sum(sizes)} prunable weights; valid: sparsity at most "
                              f"{1 - (n_first + floor) / sum(sizes):.6g}")

        if left < 0:
            raise fail(f"the dense first layer alone keeps {n_first}")
        if self.options.classifier_rule == "rest":
            group = head_ids + rest
            shares = distribute([sizes[i] for i in group], [1.0] * len(group), left)
            if sum(shares[:len(head_ids)]) >= floor:
                for i, c in zip(group, shares):
                    counts[i] = c
                return counts
            head_kept = floor
        else:
            head_kept = max(floor, kept_count(n_head, sparsity)) if head_ids else 0
        if left - head_kept < 0 or (left - head_kept > 0 and not rest) or left - head_kept > n_rest:
            raise fail(f"the dense first layer keeps {n_first} and the classifier at least {head_kept}")
        for ids, kept in ((head_ids, head_kept), (rest, left - head_kept)):
            for i, c in zip(ids, distribute([sizes[i] for i in ids], [1.0] * len(ids), kept)):
                counts[i] = c
        return counts
