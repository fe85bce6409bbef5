"""The one checkpoint format of every experiment.

``checkpoint.pt`` is a ``torch.save`` of built-in containers and tensors (read with ``weights_only=True``)::

    {"format": "pai-checkpoint", "version": 2, "experiment": "pbt", "run_hash": "...",
     "stage": 3,                 # index of the stage the run is in (stages before it are done)
     "epoch": 12,                # data epochs completed
     "state": {...},             # engine.run.RunState as a dict: step, history, records, best model, ...
     "model": state_dict, "masks": {name: tensor}, "optimizer": state_dict, "scheduler": state_dict,
     "scaler": state_dict | None, "rng": {...}}

The file carries the digest of its content (:func:`utils.io.save_torch`; version 2 on).  A damaged one
(digest mismatch, truncated, empty) raises :class:`DamagedCheckpoint`, which the engine answers by
falling back to the previous checkpoint (:meth:`engine.run.Run.restore`).  A file of another format,
version, experiment or run is refused with a :class:`CheckpointError` naming the file and what to do,
never loaded into the wrong run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.io import IntegrityError, read_torch, save_torch

FORMAT = "pai-checkpoint"
VERSION = 2  # 2: the file carries its content digest
FIX = "delete it (or rerun with --restart) to start the run over"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (foreign, old, or of another run)."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose bytes are not the ones written: damaged, truncated or empty."""


def save_checkpoint(path: str | Path, payload: dict[str, Any], *, experiment: str, run_hash: str,
                    previous: str | Path | None = None) -> None:
    """Write the checkpoint atomically; with ``previous``, the one it replaces is kept under that name."""
    save_torch(path, {"format": FORMAT, "version": VERSION, "experiment": experiment, "run_hash": run_hash,
                      **payload}, previous=previous)


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    """The content of ``path``, digest checked; a file without a digest is read only to say whose it is."""
    try:
        ckpt, missing = read_torch(path, map_location)
    except IntegrityError as exc:
        raise DamagedCheckpoint(str(exc)) from None
    if missing and isinstance(ckpt, dict) and ckpt.get("format") == FORMAT and ckpt.get("version") == VERSION:
        raise DamagedCheckpoint(str(missing))  # this version always writes the digest: it was lost
    return ckpt


def load_checkpoint(path: str | Path, *, experiment: str, run_hash: str, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be intact, of this format and version, experiment and run."""
    path = Path(path)
    try:
        ckpt = _read(path, map_location)
    except DamagedCheckpoint:
        raise
    except Exception as exc:  # noqa: BLE001 - intact but unreadable: say which file, and what to do
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc}); "
                              f"{FIX}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a '{FORMAT}' file (written by an older version of this framework "
                              f"or by something else); {FIX}")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r}, this version reads "
                              f"{VERSION}; {FIX}")
    if ckpt.get("experiment") != experiment or ckpt.get("run_hash") != run_hash:
        raise CheckpointError(f"{path}: written by experiment '{ckpt.get('experiment')}' for run "
                              f"{ckpt.get('run_hash')}, not by '{experiment}' for run {run_hash}; {FIX}")
    return ckpt
