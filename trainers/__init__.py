"""Trainers (pipelines), registered by experiment name: ``general.experiment`` selects one."""

from __future__ import annotations

from utils.registry import Registry, import_submodules

REGISTRY: Registry[type] = Registry("experiment")
register = REGISTRY.register


def discover() -> list[str]:
    return import_submodules(__name__, __path__)


def get(name: str) -> type:
    discover()
    return REGISTRY.get(name)


def names() -> list[str]:
    discover()
    return REGISTRY.names()


__all__ = ["REGISTRY", "register", "get", "names", "discover"]
