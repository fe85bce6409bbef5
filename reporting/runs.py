"""Read run folders into a pandas table (one row per run), never training anything.

A run folder is any folder under the results root holding ``status.json`` or ``config.json`` (see
:mod:`utils.results`); ``invalid/`` (configs that could not be resolved), ``batches/`` and
``score_cache/`` are not run folders.  Each run's *group* is the hash of its resolved config without
the seed and without the fields that never change results (``utils.results._HASH_EXCLUDED``): runs
with the same group differ only in the seed and are the ones averaged together.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from utils.io import read_json
from utils.results import _HASH_EXCLUDED, config_hash

NOT_RUN_DIRS = ("invalid", "batches", "score_cache")
SEED_FIELD = "general.seed"
OPTIONS_SEED_FIELD = "training.compressor.options.seed"
EXCLUDED_FIELDS = tuple(".".join(k) for k in _HASH_EXCLUDED)
DENSE_NAMES = ("none", "dense")

RUN_COLUMNS = ["dataset", "model", "criterion", "mask", "warmup", "sparsity", "seed", "options_seed", "status",
               "reason", "group", "run_dir", "config_file"]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and empty objects become JSON text (hashable)."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, (dict, list)):
        return {prefix: json.dumps(obj, sort_keys=True)}
    return {prefix: obj}


def comparable_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Flattened config minus the seed and the fields that never change results."""
    flat = flatten(config)
    drop = (SEED_FIELD, *EXCLUDED_FIELDS)
    return {k: v for k, v in flat.items() if not any(k == d or k.startswith(d + ".") for d in drop)}


def group_hash(config: dict[str, Any], *, drop_options_seed: bool = False) -> str:
    """Hash of the resolved config without the seed (the runner's ``config_hash`` with the seed fixed)."""
    data = copy.deepcopy(config)
    data.setdefault("general", {})["seed"] = None
    if drop_options_seed:
        data.get("training", {}).get("compressor", {}).get("options", {}).pop("seed", None)
    return config_hash(data)


def is_dense(criterion: Any) -> bool:
    return str(criterion).lower() in DENSE_NAMES


@dataclass
class RunSet:
    """Every run under a results root: ``runs`` (one row per run folder), their configs and results."""

    root: Path
    runs: pd.DataFrame
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    invalid: list[dict[str, Any]] = field(default_factory=list)

    def completed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "completed"]


def find_run_dirs(root: str | Path) -> list[Path]:
    """Folders holding ``status.json`` or ``config.json`` below ``root`` (not descending into them)."""
    root = Path(root)
    found: list[Path] = []
    for here, dirs, files in os.walk(root):
        path = Path(here)
        if path == root:
            dirs[:] = [d for d in dirs if d not in NOT_RUN_DIRS]
        if path != root and ("status.json" in files or "config.json" in files):
            found.append(path)
            dirs[:] = []
            continue
        dirs.sort()
    return sorted(found)


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError):
        return None


def _row(run_dir: Path, config: dict[str, Any] | None, status: dict[str, Any] | None,
         results: dict[str, Any] | None) -> dict[str, Any]:
    cfg = config or {}
    comp = cfg.get("training", {}).get("compressor", {})
    opts = comp.get("options") or {}
    st = (status or {}).get("status") or ("completed" if results is not None else "unknown")
    reason = (status or {}).get("reason")
    if status is None and results is None:
        reason = "no status.json: the run is just starting, or was never started by the runner"
    if st == "completed" and results is None:
        st, reason = "broken", "status says completed but results.json is missing or unreadable"
    if config is None:
        reason = reason or "config.json is missing or unreadable"
    row: dict[str, Any] = {
        "dataset": cfg.get("dataset", {}).get("class"),
        "model": cfg.get("model", {}).get("class"),
        "criterion": comp.get("class"),
        "mask": comp.get("mask"),
        "warmup": comp.get("warmup"),
        "sparsity": 0.0 if is_dense(comp.get("class")) else comp.get("sparsity"),
        "seed": cfg.get("general", {}).get("seed"),
        "options_seed": opts.get("seed") if isinstance(opts, dict) else None,
        "status": st,
        "reason": reason,
        "group": group_hash(cfg) if config is not None else None,
        "run_dir": str(run_dir),
        "config_file": (status or {}).get("config_file"),
    }
    for key, value in (results or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = value
    return row


def load_runs(root: str | Path, *, progress: bool = True) -> RunSet:
    """Read every run folder under ``root`` (and the invalid-config records under ``root/invalid``)."""
    root = Path(root)
    dirs = find_run_dirs(root)
    rows, configs, results = [], {}, {}
    for run_dir in tqdm(dirs, desc="reading runs", unit="run", disable=not progress or len(dirs) < 50):
        config = _read(run_dir / "config.json")
        status = _read(run_dir / "status.json")
        res = _read(run_dir / "results.json")
        rows.append(_row(run_dir, config, status, res))
        if config is not None:
            configs[str(run_dir)] = config
        if res is not None:
            results[str(run_dir)] = res
    runs = pd.DataFrame(rows)
    for col in RUN_COLUMNS:
        if col not in runs.columns:
            runs[col] = pd.Series(dtype=object)
    invalid = []
    for status_file in sorted((root / "invalid").glob("*/status.json")):
        st = _read(status_file) or {}
        invalid.append({"status": "invalid", "config_file": st.get("config_file"),
                        "reason": "; ".join(st.get("problems") or []) or st.get("reason"),
                        "run_dir": str(status_file.parent)})
    return RunSet(root, runs, configs, results, invalid)
