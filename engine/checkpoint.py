"""The one checkpoint format of every experiment.

``checkpoint.pt`` is a ``torch.save`` of built-in containers and tensors (read with ``weights_only=True``)::

    {"format": "pai-checkpoint", "version": 1, "experiment": "pbt", "run_hash": "...",
     "stage": 3,                 # index of the stage the run is in (stages before it are done)
     "epoch": 12,                # data epochs completed
     "state": {...},             # engine.run.RunState as a dict: step, history, records, best model, ...
     "model": state_dict, "masks": {name: tensor}, "optimizer": state_dict, "scheduler": state_dict,
     "scaler": state_dict | None, "rng": {...}}

A file of another format, version, experiment or run is refused with a :class:`CheckpointError` naming
the file and what to do, never loaded into the wrong run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.io import load_torch, save_torch

FORMAT = "pai-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (foreign, old, or of another run)."""


def save_checkpoint(path: str | Path, payload: dict[str, Any], *, experiment: str, run_hash: str) -> None:
    save_torch(path, {"format": FORMAT, "version": VERSION, "experiment": experiment, "run_hash": run_hash,
                      **payload})


def load_checkpoint(path: str | Path, *, experiment: str, run_hash: str, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be this format and version, of this experiment and run."""
    try:
        ckpt = load_torch(path, map_location=map_location)
    except Exception as exc:  # noqa: BLE001 - unreadable: say which file, and what to do
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc}); "
                              "delete it to start the run over") from None
    fix = "delete it (or rerun with --force) to start the run over"
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a '{FORMAT}' file (written by an older version of this framework "
                              f"or by something else); {fix}")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r}, this version reads "
                              f"{VERSION}; {fix}")
    if ckpt.get("experiment") != experiment or ckpt.get("run_hash") != run_hash:
        raise CheckpointError(f"{path}: written by experiment '{ckpt.get('experiment')}' for run "
                              f"{ckpt.get('run_hash')}, not by '{experiment}' for run {run_hash}; {fix}")
    return ckpt
