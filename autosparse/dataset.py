"""The AutoSparse training set ``autos_dataset.pt`` (written by the ``irp`` experiment).

A plain ``torch.save`` of built-in containers and tensors, so ``torch.load(path, weights_only=True)``
reads it::

    {"format": "autosparse-dataset", "version": 2,
     "iterations": N,                 # surviving scores lie in 0..N
     "schedule": "geometric",         # IRP density schedule
     "target_sparsity": 0.9, "criterion": "magnitude", "model": "digits_cnn", "dataset": "digits",
     "seed": 0,
     "tensors": [{"name": "0.weight",           # as in model.named_parameters()
                  "shape": [32, 1, 3, 3],
                  "theta0": float32 tensor,     # initial weights (after the BN warm-up)
                  "grad0": float32 tensor,      # mean mask-data gradient at theta0, eval mode
                  "score": int16 tensor},       # surviving score, 0..N
                 ...]}

All three tensors of an entry have the entry's ``shape``.  The file carries a digest of its content
(:func:`utils.io.save_torch`): a damaged file is refused, naming it; version 1 files (written before
digests) are still read, with a warning that they cannot be checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from utils.io import IntegrityError, check_undigested, read_torch, save_torch

FORMAT = "autosparse-dataset"
VERSION = 2  # 2: the file carries its content digest; 1 (no digest) is still read


class DatasetFormatError(ValueError):
    """An ``autos_dataset.pt`` file that cannot be read or does not follow the documented format."""


def build_dataset(names: Sequence[str], theta0: Mapping[str, torch.Tensor], grad0: Mapping[str, torch.Tensor],
                  scores: Mapping[str, torch.Tensor], *, iterations: int, **meta: Any) -> dict[str, Any]:
    """The dataset dict (see the module docstring) for the prunable tensors ``names``."""
    tensors = []
    for n in names:
        t0, g0, s = theta0[n], grad0[n], scores[n]
        if not (t0.shape == g0.shape == s.shape):
            raise ValueError(f"{n}: theta0 {tuple(t0.shape)}, grad0 {tuple(g0.shape)} and score {tuple(s.shape)} "
                             "must have one shape")
        if s.numel() and (int(s.min()) < 0 or int(s.max()) > iterations):
            raise ValueError(f"{n}: surviving scores must lie in 0..{iterations}")
        tensors.append({"name": n, "shape": list(t0.shape),
                        "theta0": t0.detach().to("cpu", torch.float32).clone(),
                        "grad0": g0.detach().to("cpu", torch.float32).clone(),
                        "score": s.detach().to("cpu", torch.int16).clone()})
    return {"format": FORMAT, "version": VERSION, "iterations": int(iterations), **meta, "tensors": tensors}


def save_dataset(path: str | Path, dataset: dict[str, Any]) -> None:
    """Write atomically (a killed run never leaves half a file)."""
    save_torch(path, dataset)


def load_dataset(path: str | Path) -> dict[str, Any]:
    """Read and validate one ``autos_dataset.pt``; raises :class:`DatasetFormatError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: no such AutoSparse dataset (expected autos_dataset.pt written by an "
                                 "irp run)")
    try:
        ds, missing = read_torch(path)
    except IntegrityError as exc:
        raise DatasetFormatError(f"{path}: not a readable torch file ({exc.reason})") from None
    problems = _problems(ds)
    if problems:
        raise DatasetFormatError(f"{path}: not an AutoSparse dataset ({FORMAT!r} version {VERSION}): "
                                 + "; ".join(problems))
    check_undigested(missing, ds["version"], VERSION, str(path), DatasetFormatError)
    return ds


def _problems(ds: Any) -> list[str]:
    if not isinstance(ds, dict):
        return [f"expected a dict, got {type(ds).__name__}"]
    if ds.get("format") != FORMAT or ds.get("version") not in (1, VERSION):
        return [f"format/version is {ds.get('format')!r}/{ds.get('version')!r}"]
    iterations = ds.get("iterations")
    if not isinstance(iterations, int) or iterations < 1:
        return [f"iterations must be a positive integer, got {iterations!r}"]
    out = []
    for i, t in enumerate(ds.get("tensors") or []):
        keys = ("name", "shape", "theta0", "grad0", "score")
        if not isinstance(t, dict) or any(k not in t for k in keys):
            out.append(f"tensors[{i}] lacks one of {keys}")
            continue
        shape = torch.Size(t["shape"])
        if any(t[k].shape != shape for k in ("theta0", "grad0", "score")):
            out.append(f"tensors[{i}] ({t['name']}): tensor shapes differ from {list(shape)}")
    if not ds.get("tensors"):
        out.append("no tensors")
    return out
