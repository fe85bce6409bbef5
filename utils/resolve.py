"""Config -> registries: check every name and option against the registries and fill in defaults.

``resolve(cfg)`` returns a copy whose dataset / model / criterion / experiment names are the canonical
registered names and whose option dicts are complete (defaults filled), i.e. the *resolved config*
that is saved in the run folder and hashed into its name.  ``check(cfg, file)`` returns every problem.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import compressors
import data
import models
import trainers
from utils.config import ExperimentConfig
from utils.registry import UnknownName
from utils.typed import ConfigError, Problem, parse_collect, to_dict


def _options(cls: type, given: dict[str, Any], path: str, problems: list[Problem]) -> dict[str, Any] | None:
    opts_cls = getattr(cls, "Options", None)
    if opts_cls is None:
        return dict(given)
    parsed = parse_collect(opts_cls, given, path, problems)
    return None if parsed is None else to_dict(parsed)


def resolve(cfg: ExperimentConfig, file: str | None = None, *, build_model: bool = False) -> ExperimentConfig:
    """Canonical names and complete options; raises ConfigError with every problem found.  With
    ``build_model`` (``main.py validate``) the model and the criterion are also built, so a model option
    it rejects or a missing AutoSparse predictor file is reported before any run."""
    problems: list[Problem] = []
    out = copy.deepcopy(cfg)

    def lookup(registry_get, name: str, path: str):
        try:
            return registry_get(name)
        except (UnknownName, TypeError) as exc:
            problems.append(Problem(path, str(exc)))
            return None

    trainer = lookup(trainers.get, cfg.general.experiment, "general.experiment")
    if trainer is not None:
        out.general.experiment = trainers.REGISTRY.canonical(cfg.general.experiment)

    ds_cls = lookup(data.get, cfg.dataset.name, "dataset.class")
    if ds_cls is not None:
        out.dataset.name = data.REGISTRY.canonical(cfg.dataset.name)
        opts = _options(ds_cls, cfg.dataset.options, "dataset.options", problems)
        if opts is not None:
            out.dataset.options = opts

    builder = lookup(models.get, cfg.model.name, "model.class")
    if builder is not None:
        out.model.name = models.REGISTRY.canonical(cfg.model.name)

    comp_cls = lookup(compressors.get, cfg.training.compressor.name, "training.compressor.class")
    if comp_cls is not None:
        out.training.compressor.name = compressors.REGISTRY.canonical(cfg.training.compressor.name)
        opts = _options(comp_cls, cfg.training.compressor.options, "training.compressor.options", problems)
        if opts is not None:
            out.training.compressor.options = opts
        if not comp_cls.prunes:
            out.training.compressor.sparsity = 0.0  # the dense baseline ignores the (template) sparsity

    if build_model and builder is not None and ds_cls is not None and not problems:
        num_classes = cfg.model.num_classes or ds_cls.num_classes
        shape = ds_cls.input_shape
        if num_classes is None or shape is None:
            pass  # known only after reading the data (e.g. imagefolder); built at run time
        else:
            try:
                models.build(out.model.name, num_classes=num_classes, input_shape=shape, **cfg.model.options)
            except Exception as exc:  # noqa: BLE001 - any build error is a config problem
                problems.append(Problem("model", f"cannot build '{out.model.name}' with options "
                                                 f"{cfg.model.options} for input {shape}: {exc}"))
    if build_model and comp_cls is not None and not problems:
        try:  # e.g. autosparse loads its predictor file here
            comp_cls(**out.training.compressor.options)
        except Exception as exc:  # noqa: BLE001 - any build error is a config problem
            problems.append(Problem("training.compressor.options",
                                    f"cannot build criterion '{out.training.compressor.name}': {exc}"))
    if problems:
        raise ConfigError([dataclasses.replace(p, file=file) for p in problems])
    return out
