"""The criterion base class and the rule that decides which parameters are prunable.

A criterion is one class with a registered name and a :meth:`Compressor.compute` method returning one
score tensor per prunable parameter, where **a higher score means the weight is kept**.  Criteria whose
paper removes the *largest* value of a saliency (GraSP) return its negation and say so.  The base class
takes care of what every criterion must guarantee: options are validated, the model's parameters,
buffers, ``.grad`` fields, ``requires_grad`` flags and train/eval mode are restored afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from compressors.masks import Scores
from utils import switches
from utils.schema import NoOptions, Problem, parse_strict


class ScoreMap(dict):
    """What :meth:`Compressor.score` returns: ``{param_name: score tensor}`` (a dict) together with the
    criterion's ``diagnostics`` of this very scoring (a JSON-ready dict, e.g. Hutchinson standard errors;
    empty for most criteria).  ``compute`` may return a plain dict or a ScoreMap."""

    def __init__(self, scores: Any = (), diagnostics: dict[str, Any] | None = None) -> None:
        super().__init__(scores)
        self.diagnostics: dict[str, Any] = dict(diagnostics or {})

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def classifier_name(model: nn.Module) -> str | None:
    """Module name of the final classifier: the last ``nn.Linear`` in registration order."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


PRUNABLE_RULES = ("module_type", "official_names")
OFFICIAL_SKIP = ("bias", "linear", "bn", "fc")  # the official code skips every parameter whose name holds one


def official_parameter_names(model: nn.Module) -> dict[str, str]:
    """``{name: the official code's name of the same parameter}`` for every parameter of ``model``.  A model
    whose parameter names differ from the official model's (e.g. VGG's ``features.1.weight`` is the official
    ``features.bn_1.weight``) says so with a method ``official_parameter_names() -> {name: official name}``;
    other names are taken as they are."""
    declared = getattr(model, "official_parameter_names", None)
    mapping = declared() if callable(declared) else {}
    return {n: mapping.get(n, n) for n, _ in model.named_parameters()}


def prunable_names(model: nn.Module, *, include_classifier: bool = False, include_biases: bool = False,
                   rule: str = "module_type") -> list[str]:
    """Names (as in ``model.named_parameters()``) of the prunable parameters.

    ``rule="module_type"`` (default): chosen by module type, never by substrings of names: the weights of
    Conv and Linear layers; the final classifier (last Linear) and biases only when asked; normalisation
    layers never.  ``rule="official_names"``: the official second-order PaI code's rule, every parameter
    whose official name (:func:`official_parameter_names`) contains none of ``OFFICIAL_SKIP``, in
    ``named_parameters()`` order; on its ResNets this also prunes the shortcut-BN scales
    ``layer{2,3,4}.0.shortcut.1.weight``.
    """
    if rule not in PRUNABLE_RULES:
        raise ValueError(f"prunable rule must be one of {PRUNABLE_RULES}, got {rule!r}")
    if rule == "official_names":
        if include_classifier or include_biases:
            raise ValueError("the 'official_names' prunable rule takes no prune_classifier / prune_biases")
        return [n for n, official in official_parameter_names(model).items()
                if not any(word in official for word in OFFICIAL_SKIP)]
    skip = None if include_classifier else classifier_name(model)
    names = []
    for mod_name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES) or mod_name == skip:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        if getattr(module, "weight", None) is not None:
            names.append(prefix + "weight")
        if include_biases and getattr(module, "bias", None) is not None:
            names.append(prefix + "bias")
    params = dict(model.named_parameters())
    return [n for n in names if n in params]  # shared (tied) parameters appear once, under their first name


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore parameters, buffers, grads, requires_grad and train/eval modes on exit."""
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n])
                p.requires_grad_(flags[n])
                p.grad = grads[n]
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        for n, m in model.named_modules():
            m.training = modes[n]


class Compressor:
    """Base class of pruning criteria.

    Subclasses set ``Options`` (a dataclass built with :func:`utils.schema.option`, validated like every
    config field) and implement :meth:`compute`.  Class attributes:

    - ``needs_data``: False for data-free criteria (magnitude, random, synflow);
    - ``prunes``: False only for the dense baseline ``none``;
    - ``iterative``: True when the scores depend on the target sparsity (``score(..., sparsity=s)``);
    - ``scopes``: the ``compressor.mask`` values it supports (a criterion that sets its own layer densities,
      or whose rounds select weights globally, supports ``global`` only);
    - ``global_only_because``: why, for a ``global``-only criterion (said when structured pruning, which ranks
      structures per layer or globally by aggregated scores, is asked of it).
    """

    Options: ClassVar[type] = NoOptions
    needs_data: ClassVar[bool] = True
    prunes: ClassVar[bool] = True
    iterative: ClassVar[bool] = False
    scopes: ClassVar[tuple[str, ...]] = ("global", "layer")  # the compressor.mask values it works with
    global_only_because: ClassVar[str] = "it selects its weights in one global ranking (its rounds or walks)"
    registered_name: ClassVar[str] = ""

    @classmethod
    def check_config(cls, comp: Any, problems: list[Problem], path: str = "training.compressor") -> None:
        """The cross-field checks of a run's compressor section ``comp`` (a ``runspec.config.CompressorConfig``)
        under this criterion, appended to ``problems``: the ``official_names`` prunable rule takes no
        prune_classifier / prune_biases; the dense baseline (``prunes`` False) ignores the sparsity and the
        structure of a template (both are reset here); structures need a criterion that supports per-layer
        masks (:func:`compressors.structures.check_structure`); ``mask`` must be one of ``scopes``."""
        from compressors.structures import check_structure  # (structures builds on this module)

        if comp.prunable == "official_names" and (comp.prune_classifier or comp.prune_biases):
            problems.append(Problem(f"{path}.prunable", "'official_names' is the official code's own rule and takes "
                                    "no prune_classifier / prune_biases; valid: 'module_type' (or leave those false)"))
        if not cls.prunes:
            comp.sparsity, comp.structure = 0.0, "none"  # the dense baseline ignores the (template) sparsity
        check_structure(comp.structure, comp.name, cls.scopes, problems, f"{path}.structure",
                        because=cls.global_only_because)
        if comp.mask not in cls.scopes:
            problems.append(Problem(f"{path}.mask", f"'{comp.name}' sets its own density per layer; "
                                    f"valid: {', '.join(map(repr, cls.scopes))}"))

    def __init__(self, **options: Any) -> None:
        # switches left None (utils.switches) take the paper's value; a run's spec has filled them in already
        self.options = switches.resolve(parse_strict(self.Options, options, "options"), switches.REFERENCE_MODE)

    @property
    def name(self) -> str:
        return self.registered_name or type(self).__name__

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def score(
        self,
        model: nn.Module,
        mask_loader: Iterable | None = None,
        loss_fn: nn.Module | None = None,
        *,
        sparsity: float | None = None,
        params: Sequence[str] | None = None,
    ) -> ScoreMap:
        """Score the prunable parameters of ``model``: ``{param_name: tensor shaped like the param}`` with
        the criterion's diagnostics of this scoring in ``.diagnostics``.

        ``mask_loader`` yields ``(inputs, targets)`` batches (the mask data); ``loss_fn`` maps
        ``(logits, targets)`` to the mean loss.  ``params`` overrides which parameters are scored
        (default :func:`prunable_names`).  The model is left exactly as it was.
        """
        if self.needs_data and (mask_loader is None or loss_fn is None):
            raise ValueError(f"criterion '{self.name}' needs mask data: pass mask_loader and loss_fn")
        if self.iterative and sparsity is None:
            raise ValueError(f"criterion '{self.name}' is iterative: pass the target sparsity=")
        names = list(params) if params is not None else prunable_names(model)
        all_params = dict(model.named_parameters())
        missing = [n for n in names if n not in all_params]
        if missing:
            raise KeyError(f"not parameters of the model: {missing}")
        # the math kernel of scaled_dot_product_attention: the fused (flash / memory-efficient) kernels have no
        # second derivative, which GraSP's Hessian-gradient and the Hutchinson Hessian-vector products need
        with preserved_state(model), sdpa_kernel([SDPBackend.MATH]):
            for n in names:  # frozen parameters can still be scored; the flags are restored on exit
                all_params[n].requires_grad_(True)
            scores = self.compute(model, names, mask_loader, loss_fn, sparsity)
        # contiguous: a criterion may return gradients in another memory layout (channels-last passes)
        return ScoreMap({n: scores[n].detach().to(all_params[n].device).contiguous() for n in names},
                        getattr(scores, "diagnostics", None))

    def compute(
        self,
        model: nn.Module,
        names: list[str],
        mask_loader: Iterable | None,
        loss_fn: nn.Module | None,
        sparsity: float | None,
    ) -> Scores:  # pragma: no cover - abstract
        raise NotImplementedError("abstract: subclasses implement compute()")


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
