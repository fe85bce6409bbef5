"""Pruning criteria: a registry filled by ``@register("name")`` on one class per criterion.

Public API (stable; see the README)::

    import compressors
    crit = compressors.build("snip")                  # any registered name or "pkg.module:Class"
    scores = crit.score(model, mask_loader, loss_fn)  # {param_name: tensor}, higher = keep
    masks = compressors.select(scores, sparsity=0.9, scope="global")

Every module in this package is imported on first use, so dropping a file with one decorated class
adds a criterion usable from JSON with no other edit.
"""

from __future__ import annotations

from typing import Any

from compressors.base import Compressor, Scores, classifier_name, prunable_names
from compressors.masks import collapsed_layers, density, global_sparsity, kept_count, select
from utils.registry import Registry, import_submodules

REGISTRY: Registry[type[Compressor]] = Registry("compressor")
register = REGISTRY.register


def discover() -> list[str]:
    """Import every module of this package (again picking up newly added files)."""
    return import_submodules(__name__, __path__)


def get(name: str) -> type[Compressor]:
    """The criterion class registered under ``name`` (case-insensitive) or at ``pkg.module:Class``."""
    discover()
    cls = REGISTRY.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Compressor)):
        raise TypeError(f"'{name}' is not a Compressor subclass (got {cls!r})")
    return cls


def build(name: str, **options: Any) -> Compressor:
    """Instantiate a criterion with validated options (raises ConfigError on a bad option)."""
    return get(name)(**options)


def names() -> list[str]:
    discover()
    return REGISTRY.names()


__all__ = [
    "Compressor", "Scores", "REGISTRY", "register", "build", "get", "names", "discover", "select",
    "prunable_names", "classifier_name", "kept_count", "density", "global_sparsity", "collapsed_layers",
]
