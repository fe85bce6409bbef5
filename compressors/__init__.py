"""Pruning criteria: a registry filled by ``@register("name")`` on one class per criterion.

Public API (stable; docs/criteria.md)::

    import compressors
    crit = compressors.build("snip")                  # any registered name or "pkg.module:Class"
    scores = crit.score(model, mask_loader, loss_fn)  # {param_name: tensor}, higher = keep
    masks = compressors.select(scores, sparsity=0.9, scope="global")

Every module in this package is imported on first use, so dropping a file with one decorated class
adds a criterion usable from JSON with no other edit.
"""

from __future__ import annotations

from typing import Any

from compressors.base import Compressor, ScoreMap, Scores, classifier_name, prunable_names
from compressors.masks import (
    check_masks,
    check_scores,
    collapsed_layers,
    density,
    global_sparsity,
    kept_count,
    mask_summary,
    select,
    select_remaining,
    shuffle_within_layers,
    sparsity_schedule,
)
from utils.registry import Registry

REGISTRY: Registry[type[Compressor]] = Registry("compressor", plugins="compressors.criteria")
register = REGISTRY.register
discover = REGISTRY.discover
names = REGISTRY.names


def get(name: str) -> type[Compressor]:
    """The criterion class registered under ``name`` (case-insensitive) or at ``pkg.module:Class``."""
    cls = REGISTRY.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Compressor)):
        raise TypeError(f"'{name}' is not a Compressor subclass (got {cls!r})")
    return cls


def pruning_criteria() -> list[str]:
    """The name of every registered criterion that prunes, once per class (aliases dropped), sorted."""
    found: dict[type, str] = {}
    for name in names():
        cls = get(name)
        if cls.prunes:
            found.setdefault(cls, getattr(cls, "registered_name", None) or name)
    return sorted(found.values())


def build(name: str, **options: Any) -> Compressor:
    """Instantiate a criterion with validated options (raises ConfigError on a bad option)."""
    return get(name)(**options)


__all__ = [
    "Compressor", "ScoreMap", "Scores", "REGISTRY", "register", "build", "get", "names", "discover",
    "pruning_criteria", "select",
    "prunable_names", "classifier_name", "kept_count", "density", "global_sparsity", "collapsed_layers",
    "mask_summary", "select_remaining", "shuffle_within_layers", "sparsity_schedule", "check_masks", "check_scores",
]
