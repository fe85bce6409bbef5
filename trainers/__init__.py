"""Experiments (pipelines), one registered class per module: ``general.experiment`` selects one.

Every module of this folder is an experiment plugin (discovered by :data:`runspec.EXPERIMENTS`); the
engine they are declared over lives in :mod:`engine`, the batch runner in :mod:`launch`."""

from __future__ import annotations

from runspec import EXPERIMENTS as REGISTRY

register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names
discover = REGISTRY.discover

__all__ = ["REGISTRY", "register", "get", "names", "discover"]
