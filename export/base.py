"""What every export format shares: finding and loading a completed run, and the ``export.json`` manifest.

A format is one class in one file of this package::

    # export/my_format.py
    from export import register
    from export.base import Exporter, LoadedRun

    @register("my-format")
    class MyFormat(Exporter):
        \"\"\"What the files hold and how to read them back.\"\"\"

        def export(self, loaded: LoadedRun, out: Path) -> dict:
            path = out / "model.bin"
            ...                                   # write it from loaded.model / .state_dict / .masks
            return {"files": [path], "anything": "else for export.json"}

``export`` returns the files it wrote (``files``, paths inside ``out``) and any format-specific fields;
:func:`export.export_run` adds the sizes and writes ``export.json``.  :class:`LoadedRun` holds the run's
resolved config (:class:`runspec.RunSpec`), the network with its final weights (``final_model.pt``), those
weights as a state dict, and the mask (``mask.pt``).
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import data
import models
from runspec import RunSpec
from runspec.folder import Files, RunFolder, results_root
from runspec.spec import model_build_options
from utils.io import IntegrityError, load_torch, read_json
from utils.schema import ConfigError

MANIFEST = "export.json"


class ExportError(ValueError):
    """A run that cannot be exported; the message names the file and what is wrong with it."""


@dataclass
class LoadedRun:
    """A completed run, read back: see the module docstring."""

    run_dir: Path
    spec: RunSpec
    model: nn.Module                     # the trained network (final_model.pt loaded), on the CPU, eval mode
    state_dict: dict[str, torch.Tensor]  # final_model.pt as saved
    masks: dict[str, torch.Tensor]       # mask.pt: {param_name: bool tensor}
    model_inputs: dict[str, Any]         # how to build the plain model: class, num_classes, input_shape, options

    @property
    def dense_file(self) -> Path:
        return self.run_dir / Files.FINAL_MODEL

    def fresh_model(self) -> nn.Module:
        """A copy of the trained network (exporters may change it freely)."""
        return copy.deepcopy(self.model)

    def pruned(self) -> list[str]:
        """Masked parameters with at least one removed entry."""
        return [n for n, m in self.masks.items() if not bool(m.all())]


class Exporter(abc.ABC):
    """Base class of export formats (see the module docstring); registered with ``@export.register``."""

    registered_name: str = ""

    @abc.abstractmethod
    def export(self, loaded: LoadedRun, out: Path) -> dict[str, Any]:
        """Write the format's files of ``loaded`` into ``out``; return ``{"files": [paths], ...manifest fields}``."""


def resolve_run(path: str | Path, results: str | Path | None = None) -> Path:
    """The run folder ``path`` names: a run folder itself, or a config file whose run folder lies under
    ``results`` (else its ``general.output_dir``, else ``./results``), as ``main.py run`` would put it."""
    path = Path(path)
    if path.is_dir():
        return path
    if not path.exists():
        raise ExportError(f"{path}: no such run folder or config file")
    try:
        spec = RunSpec.load(path)
    except ConfigError as exc:
        raise ExportError(f"{path}: not a run folder, and not a valid config: "
                          + "; ".join(map(str, exc.problems))) from None
    except ValueError as exc:
        raise ExportError(f"{path}: not a run folder, and not a readable config file ({exc})") from None
    root = results_root(results, spec.config.general.output_dir)
    run_dir = spec.run_dir(root)
    if not run_dir.is_dir():
        raise ExportError(f"{path}: its run folder {run_dir} does not exist (run the config first, or give the "
                          "results root it was run into with --results)")
    return run_dir


def _read_torch(path: Path) -> Any:
    if not path.is_file():
        raise ExportError(f"{path}: missing; export needs {path.name} of a completed run")
    try:
        return load_torch(path)
    except (IntegrityError, OSError, RuntimeError, ValueError) as exc:
        raise ExportError(f"{path}: cannot be read ({exc})") from None


def model_inputs(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """What building the run's network takes: the class count and input shape the run recorded in
    ``costs.json``, else those the dataset declares, else those of its data (read from disk)."""
    cfg = spec.config
    recorded = RunFolder(run_dir).read_or_none(Files.COSTS)
    recorded = recorded.get("model_inputs") if isinstance(recorded, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    ds = data.get(cfg.dataset.name)
    num_classes = cfg.model.num_classes or recorded.get("num_classes") or ds.num_classes
    input_shape = recorded.get("input_shape") or ds.input_shape
    if num_classes is None or input_shape is None:
        try:
            splits = ds(root=cfg.dataset.root, download=False, **cfg.dataset.options).load()
        except Exception as exc:  # noqa: BLE001 - whatever stops the data from loading is the answer
            raise ExportError(f"{run_dir}: the network's input shape is not recorded ({Files.COSTS}) and dataset "
                              f"'{cfg.dataset.name}' cannot be read to find it: {exc}") from None
        num_classes, input_shape = num_classes or splits.num_classes, input_shape or splits.input_shape
    return {"class": cfg.model.name, "num_classes": int(num_classes), "input_shape": [int(v) for v in input_shape],
            "options": model_build_options(cfg.model)}


def load_run(path: str | Path, results: str | Path | None = None) -> LoadedRun:
    """Read a completed run (see :func:`resolve_run`) into a :class:`LoadedRun`; an :class:`ExportError`
    names the file that is missing, unreadable or does not fit."""
    run_dir = resolve_run(path, results)
    folder = RunFolder(run_dir)
    status_file, config_file = folder.file(Files.STATUS), folder.file(Files.CONFIG)
    if not status_file.is_file() and not config_file.is_file():
        raise ExportError(f"{run_dir}: not a run folder (no {Files.STATUS}, no {Files.CONFIG})")
    status = folder.status()
    if status is None:
        raise ExportError(f"{status_file}: missing or unreadable; export needs a completed run")
    if status.get("status") != "completed":
        raise ExportError(f"{run_dir}: the run is not completed ({Files.STATUS} says {status.get('status')!r}); "
                          "export needs a completed run")
    if not config_file.is_file():
        raise ExportError(f"{config_file}: missing; export rebuilds the network from the resolved config")
    try:
        spec = RunSpec.from_dict(read_json(config_file), str(config_file))
    except ConfigError as exc:
        raise ExportError(f"{config_file}: cannot be used: " + "; ".join(map(str, exc.problems))) from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{config_file}: unreadable ({exc})") from None
    state = _read_torch(folder.file(Files.FINAL_MODEL))
    masks = _read_torch(folder.file(Files.MASK))
    if not isinstance(state, dict) or not isinstance(masks, dict):
        raise ExportError(f"{run_dir}: {Files.FINAL_MODEL} and {Files.MASK} must each hold a dict of tensors")
    inputs = model_inputs(spec, run_dir)
    model = models.build(inputs["class"], num_classes=inputs["num_classes"], input_shape=inputs["input_shape"],
                         **inputs["options"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(f"{folder.file(Files.FINAL_MODEL)}: does not fit model '{inputs['class']}' "
                          f"built from {config_file} ({str(exc).splitlines()[0]})") from None
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params or tuple(mask.shape) != tuple(params[name].shape):
            raise ExportError(f"{folder.file(Files.MASK)}: entry '{name}' has no parameter of that shape in the "
                              f"model")
    return LoadedRun(run_dir, spec, model.eval(), state, {n: m.bool() for n, m in masks.items()}, inputs)


def file_sizes(paths: list[Path], out: Path) -> dict[str, int]:
    """``{name relative to out: bytes}``."""
    return {str(Path(p).resolve().relative_to(out.resolve())): Path(p).stat().st_size for p in paths}
