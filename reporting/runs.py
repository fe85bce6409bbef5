"""Read run folders into a pandas table (one row per run), never training anything.

Run folders are found and read through the shared schema (:mod:`spec.folder`).  Each run's *group* is
the hash of its identity (:meth:`spec.RunSpec.identity`: the non-default values that change results)
without the seed: runs with the same group differ only in the seed and are the ones averaged together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

import compressors
from spec import RunSpec, identity_hash, non_identity_fields
from spec.folder import INVALID, Files, RunFolder, find_run_dirs
from utils.registry import UnknownName
from utils.typed import ConfigError

SEED_FIELD = "general.seed"
OPTIONS_SEED_FIELD = "training.compressor.options.seed"
SEED = ("general", "seed")
OPTIONS_SEED = ("training", "compressor", "options", "seed")
CRITERION = (("training", "compressor", "class"), ("training", "compressor", "options"))

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


def _without(flat: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """``flat`` minus the dotted ``paths`` and everything below them."""
    return {k: v for k, v in flat.items() if not any(k == d or k.startswith(d + ".") for d in paths)}


def comparable_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Flattened config minus the seed and the fields that are not part of a run's identity."""
    return _without(flatten(config), [SEED_FIELD, *non_identity_fields()])


def group_hash(config: dict[str, Any], *, without: tuple[tuple[str, ...], ...] = (SEED,)) -> str:
    """Hash of a resolved config's identity without the fields ``without`` (default: the seed).  A config
    this version cannot read (an older or a damaged one) is hashed from its comparable fields."""
    try:
        return identity_hash(RunSpec.from_dict(config).identity(without=without))
    except (ConfigError, TypeError, ValueError):
        return identity_hash(_without(comparable_fields(config), [".".join(p) for p in without]))


def is_dense(criterion: Any) -> bool:
    """Is ``criterion`` a registered criterion that prunes nothing (the dense baseline)?"""
    name = str(criterion)
    if ":" in name:  # a dotted path would import code just to draw a report
        return False
    try:
        return not compressors.get(name).prunes
    except (UnknownName, TypeError):
        return False


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
        folder = RunFolder(run_dir)
        config, status, res = (folder.read_or_none(f) for f in (Files.CONFIG, Files.STATUS, Files.RESULTS))
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
    for status_file in sorted((root / INVALID).glob(f"*/{Files.STATUS}")):
        st = RunFolder(status_file.parent).read_or_none(Files.STATUS) or {}
        invalid.append({"status": "invalid", "config_file": st.get("config_file"),
                        "reason": "; ".join(st.get("problems") or []) or st.get("reason"),
                        "run_dir": str(status_file.parent)})
    return RunSet(root, runs, configs, results, invalid)
