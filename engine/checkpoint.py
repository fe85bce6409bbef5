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
falling back to the previous checkpoint (:func:`restore_run`).  A file of another format, version,
experiment or run is refused with a :class:`CheckpointError` naming the file and what to do, never loaded
into the wrong run.

A run's side: :func:`save_run` writes the run's checkpoint (rank 0), :func:`restore_run` resumes a run from
the newest intact one (:func:`intact_checkpoint`; damage is moved aside and noted: :func:`report_damage`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import compressors
from engine.run import Run, RunState
from runspec.folder import Files
from utils.io import IntegrityError, read_torch, save_torch
from utils.seeding import rng_state, set_rng_state

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


# ------------------------------------------------------------------------------------------ a run's side
def save_run(run: Run) -> None:
    """Write the run's ``checkpoint.pt``; the one it replaces is kept as ``checkpoint.prev.pt``, the fallback
    when the newest is found damaged.  Rank 0 only."""
    if not run.rank.main:
        return
    save_checkpoint(run.folder.file(Files.CHECKPOINT), {
        "stage": run.state.stage, "epoch": run.state.step // run.steps_per_epoch, "state": run.state.to_dict(),
        "model": run.model.state_dict(),
        "masks": {n: m.cpu() for n, m in run.masks.items()},
        "optimizer": None if run.optimizer is None else run.optimizer.state_dict(),
        "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
        "scaler": None if run.scaler is None else run.scaler.state_dict(), "rng": rng_state(),
    }, experiment=run.spec.config.general.experiment, run_hash=run.spec.hash(),
        previous=run.folder.file(Files.CHECKPOINT_PREV))


def restore_run(run: Run) -> bool:
    """Resume ``run`` from its folder's newest intact checkpoint, if there is one (checked to be this run's)."""
    ckpt = intact_checkpoint(run)
    if ckpt is None:
        return False
    run.state = RunState.from_dict(ckpt["state"])
    run.model.load_state_dict(ckpt["model"])
    run.set_masks(ckpt["masks"])
    if run.state.optimizer is not None:
        run.new_optimizer(run.state.optimizer["epochs"], run.state.optimizer["lr"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return True


def intact_checkpoint(run: Run) -> dict[str, Any] | None:
    """``checkpoint.pt``, else ``checkpoint.prev.pt`` when the first is damaged; None when neither is there
    or both are damaged (the run starts over).  A damaged file is moved aside (``.damaged``) and what was
    done is logged and noted in ``status.json``."""
    damaged = []
    for name in (Files.CHECKPOINT, Files.CHECKPOINT_PREV):
        path = run.folder.file(name)
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path, experiment=run.spec.config.general.experiment, run_hash=run.spec.hash(),
                                   map_location=run.device)
            compressors.check_masks(ckpt["masks"], f"{path}: masks")
        except DamagedCheckpoint as exc:
            damaged.append(str(exc))
            os.replace(path, path.with_name(path.name + Files.DAMAGED))
            continue
        if damaged:
            report_damage(run, damaged, f"resumed from {name} (epoch {ckpt['epoch']})")
        return ckpt
    if damaged:
        report_damage(run, damaged, "no intact checkpoint left: the run starts over")
    return None


def report_damage(run: Run, damaged: list[str], outcome: str) -> None:
    text = f"damaged checkpoint: {'; '.join(damaged)} (moved aside as *{Files.DAMAGED}); {outcome}"
    run.log(f"  {text}")
    run.folder.note(text)
