"""A content-addressed cache of criterion scores, so runs that differ only in sparsity or mask scope
share one scoring pass.

The key is a SHA-256 over everything the scores depend on: the model's architecture (its ``repr``) and
every parameter and buffer after the BN warmup (names, dtypes, shapes, values), the scored parameter
names, the mask data (sample indices and the batches' actual tensors, hence also the mask batch size
and the dataset), the loss function's settings, the criterion's registered name and resolved options,
the device type, and -- for criteria whose scores depend on it -- the target sparsity (iterative
criteria) or the global RNG state at scoring time (stochastic criteria without an explicit ``seed``).
An entry whose stored key, names or shapes do not match, whose content digest does not (a damaged file,
see :func:`utils.io.load_torch`), or that cannot be read, is ignored and recomputed (with a warning
naming the file); entries are written atomically (``utils.io.save_torch``).  Scores are checked to be
finite (:func:`compressors.masks.check_scores`) before they are cached or used.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from compressors.base import Compressor, ScoreMap, Scores
from compressors.masks import check_scores
from utils.io import IntegrityError, load_torch, save_torch

# Bump when a criterion gives other values for the same inputs, so older entries are never used:
# 2 = Hutchinson probes drawn as a byte stream (compressors.estimators.RademacherProbes).
CACHE_VERSION = 2


def _hash_tensor(h: Any, name: str, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _loss_settings(loss_fn: Any) -> dict[str, Any]:
    settings = {"type": type(loss_fn).__qualname__}
    for k, v in sorted(vars(loss_fn).items()) if hasattr(loss_fn, "__dict__") else []:
        if isinstance(v, (int, float, str, bool)) or v is None:
            settings[k] = v
        elif isinstance(v, torch.Tensor) and not k.startswith("_"):
            settings[k] = v.tolist()
    for name, buf in getattr(loss_fn, "named_buffers", lambda: [])():
        settings[f"buffer:{name}"] = buf.tolist()
    return settings


def score_key(compressor: Compressor, model: nn.Module, names: Sequence[str], mask_loader: Iterable | None,
              loss_fn: Any, *, sparsity: float | None = None, mask_indices: Sequence[int] | None = None) -> str:
    """The cache key (hex SHA-256) of ``compressor.score(model, mask_loader, loss_fn, params=names, ...)``.

    Call it right before scoring: for stochastic criteria without a fixed ``seed`` the current global RNG
    state is part of the key.  It consumes no random numbers (the RNG state is restored)."""
    options = compressor.options_dict()
    h = hashlib.sha256()
    meta = {
        "version": CACHE_VERSION, "criterion": compressor.name, "options": options, "names": list(names),
        "model": repr(model), "loss": _loss_settings(loss_fn) if loss_fn is not None else None,
        "mask_indices": list(mask_indices) if mask_indices is not None else None,
        "device": next((p.device.type for p in model.parameters()), "cpu"),
        "sparsity": sparsity if compressor.iterative else None,
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    if "seed" in options and options["seed"] is None:
        h.update(b"rng|" + torch.random.get_rng_state().numpy().tobytes())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        _hash_tensor(h, name, t)
    if mask_loader is not None:
        with torch.random.fork_rng(devices=[]):  # iterating a DataLoader draws a base seed
            for i, (x, y) in enumerate(mask_loader):
                _hash_tensor(h, f"mask{i}x", x)
                _hash_tensor(h, f"mask{i}y", y)
    return h.hexdigest()


class ScoreCache:
    """Score files in one folder, named ``<criterion>-<key prefix>.pt`` and validated against the key."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, criterion: str, key: str) -> Path:
        return self.folder / f"{criterion}-{key[:32]}.pt"

    def load(self, criterion: str, key: str, shapes: dict[str, torch.Size]) -> tuple[Scores, dict] | None:
        """The cached ``(scores, diagnostics)`` or None when absent, stale or unreadable."""
        path = self.path(criterion, key)
        if not path.exists():
            return None
        try:
            entry = load_torch(path)
            scores = entry["scores"]
            if entry.get("key") != key or list(scores) != list(shapes):
                return None
            if any(tuple(scores[n].shape) != tuple(s) for n, s in shapes.items()):
                return None
            check_scores(scores, criterion)
            return scores, entry.get("diagnostics") or {}
        except (IntegrityError, ValueError) as exc:
            warnings.warn(f"score cache entry not used, the scores are recomputed: {exc}", stacklevel=2)
            return None
        except Exception:  # noqa: BLE001 - any unreadable entry is simply recomputed
            return None

    def save(self, criterion: str, key: str, scores: Scores, diagnostics: dict) -> Path | None:
        path = self.path(criterion, key)
        try:
            save_torch(path, {"key": key, "scores": {n: s.detach().cpu() for n, s in scores.items()},
                              "diagnostics": diagnostics})
        except OSError as exc:  # a read-only or full disk must not fail the run
            warnings.warn(f"could not write score cache {path}: {exc}", stacklevel=2)
            return None
        return path


def score_with_cache(compressor: Compressor, model: nn.Module, mask_loader: Iterable | None, loss_fn: Any, *,
                     names: Sequence[str], sparsity: float | None, cache_dir: str | Path | None,
                     mask_indices: Sequence[int] | None = None) -> tuple[ScoreMap, dict[str, Any]]:
    """``compressor.score`` through the cache in ``cache_dir`` (None: no cache).  Returns the scores (with
    their diagnostics, restored from the entry on a hit) and ``{"score_cache": "hit" | "miss" | "off",
    "score_cache_key": ...}``."""
    if cache_dir is None:
        scores = compressor.score(model, mask_loader, loss_fn, params=names, sparsity=sparsity)
        check_scores(scores, compressor.name)
        return scores, {"score_cache": "off"}
    key = score_key(compressor, model, names, mask_loader, loss_fn, sparsity=sparsity, mask_indices=mask_indices)
    cache = ScoreCache(cache_dir)
    params = dict(model.named_parameters())
    hit = cache.load(compressor.name, key, {n: params[n].shape for n in names})
    if hit is not None:
        scores, diagnostics = hit
        return (ScoreMap({n: scores[n].to(params[n].device) for n in names}, diagnostics),
                {"score_cache": "hit", "score_cache_key": key})
    scores = compressor.score(model, mask_loader, loss_fn, params=names, sparsity=sparsity)
    check_scores(scores, compressor.name)
    cache.save(compressor.name, key, scores, scores.diagnostics)
    return scores, {"score_cache": "miss", "score_cache_key": key}
