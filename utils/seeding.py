"""Seeding and RNG-state capture, so runs are reproducible and resumes are exact."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch

# The largest seed every RNG seeded here takes: torch.manual_seed accepts 64 bits (signed values from
# -2**63), random.seed any integer, NumPy is seeded with seed % 2**32.  Seed fields are capped to it.
MAX_SEED = 2**63 - 1


def derive_seed(seed: int, *parts: Any) -> int:
    """A stable 63-bit seed derived from a run seed and labels (e.g. ``derive_seed(0, "shuffle", 3)``)."""
    text = "/".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of epoch ``epoch``: a permutation of ``range(n)`` seeded by (seed, epoch).
    Shared by the classic and the device-resident loaders, so both see the same order."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "shuffle", epoch))
    return torch.randperm(n, generator=gen)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state (Python, NumPy, torch CPU, torch CUDA)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
