"""The run specification: one object that is loaded from a config file, checks itself, knows its
identity and its run folder (open_lth's ``desc.py`` above our registries).

    spec = RunSpec.load("exp_configs/quickstart/snip.json")   # ConfigError lists every problem
    spec.run_dir("results")                                   # results/pbt/digits/digits_cnn/snip/0.9/seed_0-<hash>
    run = engine.assemble(spec, spec.folder("results"))       # the live objects of the run (engine/assemble.py)

The run's objects (loaders, model, criterion, optimizer, ...) are built in one place, the composition root
:func:`engine.assemble.assemble`; ``validate`` only tries :func:`models.build` and :func:`compressors.build`
here (:meth:`RunSpec.build_problems`).  Each registry owns its cross-field checks (the criterion class:
:meth:`compressors.Compressor.check_config`; the experiment class: ``check_config``); :func:`_resolve` calls them.

Identity: the run hash is the SHA-256 of the config's *non-default* values (:func:`utils.schema.nondefault`
over the config, the dataset's, the criterion's and the experiment's options; fields marked
``identity=False`` left out), so adding an option with a default never moves an existing run.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import inspect
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

import compressors
import data
import models
from runspec.config import TRACKER_PACKAGES, ExperimentConfig, parse_config, read_config_file
from runspec.folder import RunFolder
from runspec.paths import apply_overrides
from utils import switches
from utils.naming import slug
from utils.registry import Registry, UnknownName
from utils.schema import (
    ConfigError,
    NoOptions,
    Problem,
    describe_fields,
    non_identity_paths,
    nondefault,
    parse_collect,
    to_dict,
)


def model_build_options(model: Any) -> dict[str, Any]:
    """The keyword arguments that build the network of ``model`` (a resolved :class:`ModelConfig`):
    ``model.options``, plus ``pooling`` for the builders that take it when it is not their default
    (the one place a run, its export and its compact model get the same network from)."""
    options = dict(model.options)
    pooling = getattr(model, "pooling", None)
    if pooling not in (None, "adaptive") and "pooling" not in options:
        builder = models.get(model.name)
        if "pooling" in inspect.signature(builder).parameters:
            options["pooling"] = pooling
    return options


# Experiments (trainers/) register here: the specification needs their options, the trainers need the spec.
EXPERIMENTS: Registry[type] = Registry("experiment", plugins="trainers")
SEED_PATH = ("general", "seed")


def experiment_sections() -> dict[str, type]:
    """``training.<section>`` key -> experiment class, for every registered experiment with options."""
    EXPERIMENTS.discover()
    classes = {id(c): c for c in (EXPERIMENTS.get(n) for n in EXPERIMENTS.names())}
    return {c.section: c for c in classes.values() if getattr(c, "section", None)}


def _lookup(registry_get, name: str, path: str, problems: list[Problem]) -> Any:
    try:
        return registry_get(name)
    except (UnknownName, TypeError) as exc:
        problems.append(Problem(path, str(exc)))
        return None


def _options(cls: type | None, given: dict[str, Any], path: str, problems: list[Problem]) -> Any:
    """The parsed ``Options`` dataclass of ``cls`` (NoOptions when it declares none); None for an unknown
    ``cls`` (already a problem) or options that cannot be parsed."""
    if cls is None:
        return None
    return parse_collect(getattr(cls, "Options", NoOptions), given, path, problems)


@dataclasses.dataclass
class RunSpec:
    """A checked config with canonical names and complete options (see the module docstring).

    ``config`` is the typed config (``dataset.options`` / ``training.compressor.options`` complete dicts);
    ``dataset_options``, ``criterion_options`` and ``experiment_options`` are the parsed option
    dataclasses; ``experiment`` is the experiment class."""

    config: ExperimentConfig
    experiment: type
    experiment_options: Any
    dataset_options: Any
    criterion_options: Any
    file: str | None = None

    # ------------------------------------------------------------------ loading and checking
    @classmethod
    def load(cls, path: str | Path, *, build: bool = False, overrides: Sequence[tuple[str, Any]] = ()) -> RunSpec:
        """Read and check one JSON config file (``build``: also build the model and the criterion, as
        ``validate`` does; ``overrides``: ``(dotted path, value)`` pairs set in the file's content first,
        as ``main.py run --set`` does, so they are checked like any field and are part of the identity).
        Raises ConfigError with every problem found."""
        spec = cls.from_dict(apply_overrides(read_config_file(path), list(overrides)), str(path), build=build)
        if not spec.config.general.id:
            spec.config.general.id = Path(path).stem
        return spec

    @classmethod
    def from_dict(cls, raw: Any, file: str | None = None, *, build: bool = False) -> RunSpec:
        """Check a config dict (a file's content or a resolved ``config.json``); see :meth:`load`."""
        problems: list[Problem] = []
        if not isinstance(raw, dict):
            raise ConfigError([Problem("", f"a config must be a JSON object, got {json_kind(raw)}", file)])
        raw, sections = _split_sections(raw)
        cfg, found = parse_config(raw)
        problems.extend(found)
        if cfg is None:
            raise ConfigError([dataclasses.replace(p, file=file) for p in problems])
        spec = _resolve(cfg, sections, problems, file)
        if build and not problems:
            spec._try_build(problems)
        if problems:
            raise ConfigError([dataclasses.replace(p, file=file) for p in problems])
        return spec

    def _try_build(self, problems: list[Problem], *, model: bool = True, criterion: bool = True) -> None:
        """Build the model (when its input is known without data) and the criterion, as problems."""
        cfg = self.config
        ds_cls = data.get(cfg.dataset.name)
        num_classes = cfg.model.num_classes or ds_cls.num_classes
        if model and num_classes is not None and ds_cls.input_shape is not None:  # else known from the data only
            try:
                models.build(cfg.model.name, num_classes=num_classes, input_shape=ds_cls.input_shape,
                             **cfg.model.options)
            except Exception as exc:  # noqa: BLE001 - any build error is a config problem
                problems.append(Problem("model", f"cannot build '{cfg.model.name}' with options "
                                                 f"{cfg.model.options} for input {ds_cls.input_shape}: {exc}"))
                return
        if cfg.training.compressor.mask_indices:
            try:
                data.read_index_file(cfg.training.compressor.mask_indices)
            except ValueError as exc:
                problems.append(Problem("training.compressor.mask_indices", str(exc)))
        if criterion:
            try:  # e.g. autosparse loads its predictor file here
                compressors.build(cfg.training.compressor.name, **cfg.training.compressor.options)
            except Exception as exc:  # noqa: BLE001 - any build error is a config problem
                problems.append(Problem("training.compressor.options",
                                        f"cannot build criterion '{cfg.training.compressor.name}': {exc}"))

    def build_problems(self, *, model: bool = True, criterion: bool = True) -> list[Problem]:
        """What building the model and / or the criterion reports (``validate`` and ``sweep`` call this)."""
        problems: list[Problem] = []
        self._try_build(problems, model=model, criterion=criterion)
        return [dataclasses.replace(p, file=self.file) for p in problems]

    def data_problems(self, seen: dict[str, list[Problem]] | None = None) -> list[Problem]:
        """Is the dataset present (read from disk, never downloaded), does every image file of every split
        decode (each bad one named) and does ``model.num_classes`` fit it?  ``validate --data``; ``seen``
        caches the answer per dataset (name, root, options) across configs."""
        ds = self.config.dataset
        key = json.dumps([ds.name, ds.root, ds.options, self.config.model.num_classes], sort_keys=True, default=str)
        seen = {} if seen is None else seen
        if key not in seen:
            seen[key] = found = []
            try:
                from data.image_files import undecodable

                source = data.get(ds.name)(root=ds.root, download=False, **ds.options)
                checked: set[str] = set()

                def bad_images(named: dict[str, list]) -> list[Problem]:
                    """Decode every image file of each split (once) and name each that does not decode."""
                    out = []
                    for split, samples in named.items():
                        paths = [str(p) for p, _ in samples if str(p) not in checked]
                        checked.update(paths)
                        out += [Problem("dataset", f"dataset '{ds.name}': {split} image {path} cannot be "
                                                   f"decoded ({why})")
                                for path, why in undecodable(paths, desc=f"decoding {ds.name} {split} images")]
                    return out

                listing = getattr(source, "image_samples", None)
                if callable(listing):  # before load(): it computes statistics from the training images
                    found += bad_images(listing())
                if not found:
                    splits = source.load()
                    found += bad_images({split: getattr(splits, split).samples for split in ("train", "test")
                                         if isinstance(getattr(getattr(splits, split), "samples", None), list)})
                    problem = class_count_problem(self.config.model.num_classes, splits.num_classes, ds.name)
                    if problem:
                        found.append(Problem("model.num_classes", problem))
            except Exception as exc:  # noqa: BLE001 - whatever stops the data from loading is the answer
                found.append(Problem("dataset", f"dataset '{ds.name}' cannot be read: {exc}"))
        return [dataclasses.replace(p, file=self.file) for p in seen[key]]

    # ------------------------------------------------------------------------ identity
    @property
    def prunes(self) -> bool:
        """False for the dense baseline (a criterion that prunes nothing)."""
        return bool(compressors.get(self.config.training.compressor.name).prunes)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (``config.json``): canonical names, every default filled in, and the
        experiment's own section under ``training.<section>``."""
        out = to_dict(self.config)
        section = getattr(self.experiment, "section", None)
        if section:
            out["training"][section] = to_dict(self.experiment_options)
        return out

    def identity(self, *, without: tuple[tuple[str, ...], ...] = ()) -> dict[str, Any]:
        """The values that differ from their defaults (see the module docstring), minus ``without``."""
        # switches at their paper value count as defaults: spelling out the paper's behaviour, or adding a
        # switch, never moves a run (general.compat itself is not part of the identity: its values are)
        ident = nondefault(switches.at_reference(self.config))
        _put(ident, ("dataset", "options"), nondefault(self.dataset_options))
        _put(ident, ("training", "compressor", "options"), nondefault(switches.at_reference(self.criterion_options)))
        section = getattr(self.experiment, "section", None)
        if section:
            _put(ident, ("training", section), nondefault(self.experiment_options))
        for path in without:
            _put(ident, path, None)
        return ident

    def hash(self) -> str:
        """First 10 hex digits of the SHA-256 of :meth:`identity`."""
        return identity_hash(self.identity())

    def group_hash(self) -> str:
        """The hash of the identity without the seed: runs with the same group differ only in the seed."""
        return identity_hash(self.identity(without=(SEED_PATH,)))

    def run_path(self) -> Path:
        """The run folder relative to a results root (see :mod:`runspec.folder`)."""
        cfg = self.config
        comp = cfg.training.compressor
        sparsity = f"{comp.sparsity:g}" if self.prunes else "dense"
        criterion = comp.name + (f"-{comp.mask}" if comp.mask != "global" else "")
        names = [cfg.general.experiment, cfg.dataset.name, cfg.model.name, criterion]
        return Path(*(slug(n.lower()) for n in names), slug(sparsity), slug(f"seed_{cfg.general.seed}-{self.hash()}"))

    def run_dir(self, root: str | Path) -> Path:
        return Path(root) / self.run_path()

    def folder(self, root: str | Path) -> RunFolder:
        """The run folder under ``root``, with the root's shared score cache."""
        return RunFolder.under(root, self.run_path())

    # ---------------------------------------------------------------------------- device
    def device(self) -> torch.device:
        """``cuda:<gpu_id>`` when GPUs are requested and available, else the CPU.  A launcher that gives a
        worker one GPU (``CUDA_VISIBLE_DEVICES``) sets ``PAI_CUDA_INDEX`` to the index to use instead."""
        gpu = self.config.general.gpu
        if gpu.ngpus > 0 and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("PAI_CUDA_INDEX", gpu.gpu_id)))
        return torch.device("cpu")


# ---------------------------------------------------------------------------------------- helpers
def json_kind(value: Any) -> str:
    """The JSON name of a value's type (``null``, ``a list`` ...), for messages."""
    kinds = {type(None): "null", list: "a list", str: "a string", bool: "true/false", int: "a number",
             float: "a number", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def identity_hash(identity: dict[str, Any]) -> str:
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def config_fields() -> list[tuple[str, str, str, str]]:
    """(JSON path, type, default, meaning) of every config field, the experiments' own sections included
    (after the other ``training`` fields): the field table of docs/configs.md (``main.py list --fields``)."""
    rows = describe_fields(ExperimentConfig)
    extra = [row for key, cls in sorted(experiment_sections().items())
             for row in describe_fields(cls.Options, f"training.{key}")]
    last = max(i for i, row in enumerate(rows) if row[0].startswith("training."))
    return rows[:last + 1] + extra + rows[last + 1:]


def non_identity_fields() -> list[str]:
    """Dotted paths of the config fields that are not part of a run's identity (names, folders, workers)."""
    return non_identity_paths(ExperimentConfig)


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set ``tree[path] = value``, or remove it (and emptied parents) when ``value`` is empty/None."""
    node = tree
    for key in path[:-1]:
        if key not in node:
            if not value:
                return
            node[key] = {}
        node = node[key]
    if value:
        node[path[-1]] = value
    else:
        node.pop(path[-1], None)
        if not node and len(path) > 1:
            _put(tree, path[:-1], None)


def _split_sections(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``raw`` without the experiments' own sections under ``training``, and those sections."""
    training = raw.get("training")
    if not isinstance(training, dict):
        return raw, {}
    known = experiment_sections()
    sections = {k: v for k, v in training.items() if k in known}
    if not sections:
        return raw, {}
    raw = copy.copy(raw)
    raw["training"] = {k: v for k, v in training.items() if k not in known}
    return raw, sections


def class_count_problem(given: int | None, classes: int | None, dataset: str) -> str | None:
    """What is wrong with ``model.num_classes`` = ``given`` for a dataset of ``classes`` classes, if anything:
    fewer outputs than classes (``Target 9 is out of bounds`` in the middle of training otherwise)."""
    if given is None or classes is None or given >= classes:
        return None
    return (f"{given} is smaller than the {classes} classes of dataset '{dataset}'; valid: null (from the "
            f"dataset) or at least {classes}")


def _check_num_classes(cfg: ExperimentConfig, ds_cls: Any, problems: list[Problem]) -> None:
    """``model.num_classes`` below the class count the dataset class declares (others: at run time)."""
    problem = class_count_problem(cfg.model.num_classes, getattr(ds_cls, "num_classes", None), cfg.dataset.name)
    if problem:
        problems.append(Problem("model.num_classes", problem))


def _resolve(cfg: ExperimentConfig, sections: dict[str, Any], problems: list[Problem], file: str | None) -> RunSpec:
    """Canonical names, complete options and the experiment's cross-field checks."""
    out = copy.deepcopy(cfg)
    exp_cls = _lookup(EXPERIMENTS.get, cfg.general.experiment, "general.experiment", problems)
    if exp_cls is not None:
        out.general.experiment = EXPERIMENTS.canonical(cfg.general.experiment)
    section = getattr(exp_cls, "section", None)
    exp_opts = _options(exp_cls, sections.get(section, {}) if section else {}, f"training.{section}", problems)
    known = experiment_sections()
    for key, value in sections.items():  # another experiment's section: checked, then left out
        if key != section:
            _options(known[key], value, f"training.{key}", problems)
    ds_cls = _lookup(data.get, cfg.dataset.name, "dataset.class", problems)
    ds_opts = _options(ds_cls, cfg.dataset.options, "dataset.options", problems)
    if ds_cls is not None:
        out.dataset.name = data.REGISTRY.canonical(cfg.dataset.name)
        out.dataset.options = to_dict(ds_opts) if ds_opts is not None else cfg.dataset.options
        if out.dataset.normalization == "official" and getattr(ds_cls, "official_std", None) is None:
            problems.append(Problem("dataset.normalization", f"the official code has no normalisation constants for "
                                    f"dataset '{out.dataset.name}'; valid: 'measured' or null"))
    # general.compat: every switch left null gets its value in that mode (the dataset's own official values
    # first); the criterion's switches likewise, below
    mode = out.general.compat
    official = getattr(ds_cls, "official_settings", None)
    switches.resolve(out.dataset, mode, official() if callable(official) else {})
    switches.resolve(out, mode)
    _check_num_classes(cfg, ds_cls, problems)
    if (builder := _lookup(models.get, cfg.model.name, "model.class", problems)) is not None:
        out.model.name = models.REGISTRY.canonical(cfg.model.name)
        if "pooling" not in inspect.signature(builder).parameters:
            out.model.pooling = "adaptive"  # one pooling: the switch does not apply (nor enter the identity)
    comp = out.training.compressor
    comp_cls = _lookup(compressors.get, comp.name, "training.compressor.class", problems)
    comp_opts = _options(comp_cls, comp.options, "training.compressor.options", problems)
    if comp_cls is not None:
        comp.name = compressors.REGISTRY.canonical(comp.name)
        switches.resolve(comp_opts, mode)
        comp.options = to_dict(comp_opts) if comp_opts is not None else comp.options
        comp_cls.check_config(comp, problems)  # prunable rule, dense baseline, structure and mask vs scopes
        if comp.ablation != "none" and not getattr(exp_cls, "supports_ablation", True):
            problems.append(Problem("training.compressor.ablation", f"experiment '{cfg.general.experiment}' prunes "
                                    "in several steps, which the one-mask sanity checks do not define; valid: 'none'"))
        if comp.structure != "none" and not getattr(exp_cls, "supports_structure", True):
            problems.append(Problem("training.compressor.structure", f"experiment '{cfg.general.experiment}' prunes "
                                    "in several steps; structured pruning is one-shot; valid: 'none'"))
    for i, tracker in enumerate(out.general.trackers):
        if importlib.util.find_spec(TRACKER_PACKAGES[tracker]) is None:
            problems.append(Problem(f"general.trackers[{i}]", f"'{tracker}' needs the {TRACKER_PACKAGES[tracker]} "
                                    f"package (pip install {TRACKER_PACKAGES[tracker]}), or leave it out"))
    if exp_cls is not None and exp_opts is not None and hasattr(exp_cls, "check_config"):
        exp_cls.check_config(out, exp_opts, problems)
    return RunSpec(out, exp_cls, exp_opts, ds_opts, comp_opts, file)
