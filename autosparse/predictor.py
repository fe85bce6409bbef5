"""The AutoSparse predictor: an MLP from per-weight features to a keep score, and its file format.

File (``torch.save`` of built-in containers and tensors only, so ``torch.load(path, weights_only=True)``
reads it and no class is unpickled)::

    {"format": "autosparse-predictor", "version": 2,
     "state_dict": {"0.weight": ..., "0.bias": ..., ...},   # nn.Sequential(Linear, ReLU, ..., Linear)
     "settings": {"inputs": 2, "feature_names": ["theta0", "grad0"],
                  "features": "standardized" | "raw", "hidden": [64, 64], "activation": "relu",
                  "target": "surviving score / iterations"},
     "training": {...}}   # datasets, hyper-parameters, seed, hold-out metrics (informational)

The file carries a digest of its content (:func:`utils.io.save_torch`): a damaged file is refused, naming
it.  Version 1 files (written before digests) are still read, with a warning that they cannot be checked.

The network predicts the surviving score scaled to [0, 1] (AutoSparse, arXiv 2408.14757); as a
pruning criterion only its order matters (higher = keep).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from autosparse.features import FEATURE_MODES, FEATURE_NAMES, feature_rows, feature_stats
from utils.io import IntegrityError, check_undigested, read_torch, save_torch

FORMAT = "autosparse-predictor"
VERSION = 2  # 2: the file carries its content digest; 1 (no digest) is still read
EXPECTED = (f"a predictor file written by `python main.py autos-train` (a dict with format {FORMAT!r}, "
            f"version {VERSION}, 'state_dict' and 'settings')")


class PredictorError(ValueError):
    """A predictor file that is missing, unreadable or incompatible with this code."""


def build_mlp(inputs: int, hidden: Sequence[int]) -> nn.Sequential:
    """``Linear(inputs, h1), ReLU, ..., Linear(h_last, 1)``."""
    layers: list[nn.Module] = []
    width = inputs
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def make_settings(features: str, hidden: Sequence[int]) -> dict[str, Any]:
    if features not in FEATURE_MODES:
        raise ValueError(f"features must be one of {FEATURE_MODES}, got {features!r}")
    return {"inputs": len(FEATURE_NAMES), "feature_names": list(FEATURE_NAMES), "features": features,
            "hidden": [int(h) for h in hidden], "activation": "relu", "target": "surviving score / iterations"}


def save_predictor(path: str | Path, net: nn.Module, settings: dict[str, Any], training: dict[str, Any]) -> None:
    """Write the predictor file (atomically)."""
    state = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
    save_torch(path, {"format": FORMAT, "version": VERSION, "state_dict": state, "settings": dict(settings),
                      "training": training})


def load_predictor(path: str | Path) -> tuple[nn.Sequential, dict[str, Any]]:
    """``(network in eval mode, settings)``; a :class:`PredictorError` naming ``path`` and what was expected
    when the file is missing, unreadable or incompatible."""
    path = Path(path)
    if not path.is_file():
        raise PredictorError(f"autosparse predictor {str(path)!r}: no such file; expected {EXPECTED}")
    try:
        blob, missing = read_torch(path)
    except IntegrityError as exc:
        raise PredictorError(f"autosparse predictor {str(path)!r}: cannot be read ({exc.reason}); expected "
                             f"{EXPECTED}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise PredictorError(f"autosparse predictor {str(path)!r}: format is {got!r}; expected {EXPECTED}")
    if blob.get("version") not in (1, VERSION):
        raise PredictorError(f"autosparse predictor {str(path)!r}: version {blob.get('version')!r} is not "
                             f"supported; expected version {VERSION}")
    check_undigested(missing, blob.get("version"), VERSION, f"autosparse predictor {str(path)!r}", PredictorError)
    settings = blob.get("settings")
    if (not isinstance(settings, dict) or settings.get("feature_names") != list(FEATURE_NAMES)
            or settings.get("features") not in FEATURE_MODES or settings.get("inputs") != len(FEATURE_NAMES)
            or not isinstance(settings.get("hidden"), list)):
        raise PredictorError(f"autosparse predictor {str(path)!r}: incompatible settings {settings!r}; expected "
                             f"inputs {len(FEATURE_NAMES)}, feature_names {list(FEATURE_NAMES)}, features one of "
                             f"{FEATURE_MODES} and a list of hidden sizes")
    net = build_mlp(settings["inputs"], settings["hidden"])
    try:
        net.load_state_dict(blob.get("state_dict") or {})
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise PredictorError(f"autosparse predictor {str(path)!r}: state_dict does not match an MLP with hidden "
                             f"sizes {settings['hidden']}: {str(exc).splitlines()[0]}") from None
    return net.eval(), settings


@torch.no_grad()
def predict_rows(net: nn.Module, rows: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
    """Predictions ``(n,)`` for feature rows ``(n, inputs)``, ``batch_size`` rows at a time."""
    net.eval()
    out = [net(rows[i:i + batch_size]).reshape(-1) for i in range(0, rows.shape[0], batch_size)]
    return torch.cat(out) if out else rows.new_zeros(0)


@torch.no_grad()
def predict_tensor(net: nn.Module, settings: dict[str, Any], theta0: torch.Tensor, grad0: torch.Tensor,
                   batch_size: int = 65536) -> torch.Tensor:
    """The predicted score of every weight of one tensor, shaped like ``theta0``.  Features are formed
    ``batch_size`` weights at a time (memory bounded by the batch, not the tensor)."""
    shift, scale = feature_stats(theta0, grad0, settings["features"])
    t_flat, g_flat = theta0.detach().reshape(-1), grad0.detach().reshape(-1)
    dev = next(net.parameters()).device
    out = torch.empty(t_flat.numel(), dtype=torch.float32, device=theta0.device)
    for i in range(0, t_flat.numel(), batch_size):
        rows = feature_rows(t_flat[i:i + batch_size], g_flat[i:i + batch_size], shift, scale).to(dev)
        out[i:i + batch_size] = net(rows).reshape(-1).to(out.device)
    return out.reshape(theta0.shape)
