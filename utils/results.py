"""The run folder: where a run's resolved config, status, metrics, mask and checkpoint live.

Layout: ``<root>/<experiment>/<dataset>/<model>/<compressor>/<sparsity>/seed_<n>-<hash>/`` where
``hash`` is the first 10 hex digits of the SHA-256 of the resolved config minus the fields that do not
change results (name, description, output folder, GPU index, worker count).  Re-running an identical
experiment finds the same folder; a different experiment can never land in it.

Files: ``config.json`` (resolved config), ``status.json`` (running / completed / failed / interrupted,
reason, traceback, times), ``environment.json``, ``history.json`` / ``history.csv`` (per epoch),
``results.json`` (every final number), ``mask.pt``, ``checkpoint.pt`` (last completed epoch).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from utils.io import read_json, write_json

# fields that never change what a run computes
_HASH_EXCLUDED = (
    ("general", "id"), ("general", "description"), ("general", "output_dir"), ("general", "gpu"),
    ("dataset", "num_workers"), ("dataset", "root"), ("dataset", "download"),
)

STATUSES = ("running", "completed", "failed", "interrupted")


def config_hash(resolved: dict[str, Any]) -> str:
    data = copy.deepcopy(resolved)
    for section, key in _HASH_EXCLUDED:
        data.get(section, {}).pop(key, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _slug(text: Any) -> str:
    out = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(text))
    return out.strip("-") or "x"


def run_dir(root: str | Path, resolved: dict[str, Any]) -> Path:
    """The run folder of a resolved config (see the module docstring)."""
    comp = resolved["training"]["compressor"]
    sparsity = "dense" if comp["class"].lower() in ("none", "dense") else f"{comp['sparsity']:g}"
    parts = [
        resolved["general"]["experiment"], resolved["dataset"]["class"], resolved["model"]["class"],
        comp["class"] + (f"-{comp['mask']}" if comp["mask"] != "global" else ""), sparsity,
        f"seed_{resolved['general']['seed']}-{config_hash(resolved)}",
    ]
    return Path(root).joinpath(*(_slug(p.lower() if i < 4 else p) for i, p in enumerate(parts)))


class RunStore:
    """Reads and writes the files of one run folder (atomically)."""

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        # shared folder for results reusable across runs of one results root (e.g. cached scores)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def file(self, name: str) -> Path:
        return self.path / name

    # status -----------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        try:
            return read_json(self.file("status.json"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def set_status(self, status: str, **fields: Any) -> None:
        assert status in STATUSES, status
        current = self.status() or {}
        current.update(fields)
        current["status"] = status
        current["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if status == "running":
            for stale in ("reason", "traceback", "problems"):
                current.pop(stale, None)
        write_json(self.file("status.json"), current)

    def is_completed(self) -> bool:
        st = self.status()
        return bool(st and st.get("status") == "completed" and self.file("results.json").exists())

    # json files -------------------------------------------------------------
    def write(self, name: str, obj: Any) -> None:
        write_json(self.file(name), obj)

    def read(self, name: str) -> Any:
        return read_json(self.file(name))
