"""The run specification (above the registries of data, models and criteria; below the trainers).

:class:`RunSpec` loads and checks a config and knows its identity and run folder (the run's objects are
built from it by the composition root, :func:`engine.assemble.assemble`); :mod:`runspec.folder` declares the
run folder that writers and readers share."""

from __future__ import annotations

from runspec.spec import (
    EXPERIMENTS,
    RunSpec,
    config_fields,
    experiment_sections,
    identity_hash,
    non_identity_fields,
)

__all__ = ["EXPERIMENTS", "RunSpec", "config_fields", "experiment_sections", "identity_hash", "non_identity_fields"]
