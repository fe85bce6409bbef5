"""Datasets: a registry of :class:`data.base.DatasetSource` classes, one module per dataset family.

``data.get(name)`` returns the class; ``data.build_loaders(splits, LoaderSettings(...), MaskDataSettings(...),
seed=..., placement=Placement(...))`` builds the train / val / test / mask loaders for a run.
"""

from __future__ import annotations

from data.base import DatasetSource, DataSplits
from utils.registry import Registry

REGISTRY: Registry[type[DatasetSource]] = Registry("dataset", plugins="data.datasets")
register = REGISTRY.register
discover = REGISTRY.discover
get = REGISTRY.get
names = REGISTRY.names

from data.loaders import (  # noqa: E402
    Loaders,
    LoaderSettings,
    MaskDataSettings,
    Placement,
    build_loaders,
    mask_indices,
    read_index_file,
    smoke_eval_loaders,
)

__all__ = ["REGISTRY", "register", "get", "names", "discover", "DatasetSource", "DataSplits", "Loaders",
           "LoaderSettings", "MaskDataSettings", "Placement", "build_loaders", "mask_indices", "read_index_file",
           "smoke_eval_loaders"]
