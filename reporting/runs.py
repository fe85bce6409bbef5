"""Read run folders into a pandas table (one row per run), never training anything.

Run folders are found and read through the shared schema (:mod:`runspec.folder`).  Each run's *group* is
the hash of its identity (:meth:`spec.RunSpec.identity`: the non-default values that change results)
without the seed: runs with the same group differ only in the seed and are the ones averaged together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

import compressors
from runspec.copies import (  # noqa: F401 - re-exported: reporting.runs' names before runspec.copies
    SEED,
    SEED_FIELD,
    comparable_fields,
    flatten,
    group_hash,
    mark_duplicates,
    results_digest,
)
from runspec.folder import INVALID, Files, RunFolder, RunState, find_run_dirs, read_record, read_state
from utils.registry import UnknownName

OPTIONS_SEED_FIELD = "training.compressor.options.seed"
OPTIONS_SEED = ("training", "compressor", "options", "seed")
CRITERION = (("training", "compressor", "class"), ("training", "compressor", "options"))

RUN_COLUMNS = ["dataset", "model", "criterion", "mask", "warmup", "sparsity", "seed", "options_seed", "status",
               "reason", "group", "run_dir", "config_file"]


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
    duplicates: int = 0  # run folders that repeat a completed run of the set (status ``duplicate``)

    def completed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "completed"]


def _get(tree: Any, *keys: str) -> Any:
    """``tree[k1][k2]...``, or None where a level is missing or not an object."""
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _row(run_dir: Path, rs: RunState) -> dict[str, Any]:
    cfg, status, results = rs.config or {}, rs.status or {}, rs.results
    comp = _get(cfg, "training", "compressor") or {}
    opts = comp.get("options") or {}
    usable = rs.state != "broken"
    row: dict[str, Any] = {
        "dataset": _get(cfg, "dataset", "class") if usable else None,
        "model": _get(cfg, "model", "class") if usable else None,
        "criterion": comp.get("class") if usable else None,
        "mask": comp.get("mask") if usable else None,
        "warmup": comp.get("warmup") if usable else None,
        "sparsity": (0.0 if is_dense(comp.get("class")) else comp.get("sparsity")) if usable else None,
        "seed": _get(cfg, "general", "seed") if usable else None,
        "options_seed": opts.get("seed") if isinstance(opts, dict) and usable else None,
        "status": rs.state,
        "reason": rs.reason,
        "group": group_hash(cfg) if rs.config is not None and usable else None,
        "run_dir": str(run_dir),
        "config_file": status.get("config_file") if isinstance(status.get("config_file"), str) else None,
    }
    for key, value in (results or {}).items() if usable else ():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = value
    return row


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """``(row, config, results)`` of one run folder; anything wrong with its files (unreadable, or impossible
    numbers: :func:`runspec.folder.read_state`, the rule ``main.py status`` follows too) makes the row
    ``broken`` with the reason (the folder is listed among the report's issues), never an exception."""
    rs = read_state(RunFolder(run_dir))
    row = _row(run_dir, rs)
    if row["status"] == "broken":
        return row, None, None
    return row, rs.config, rs.results


def load_runs(root: str | Path, *, progress: bool = True) -> RunSet:
    """Read every run folder under ``root`` (and the invalid-config records under ``root/invalid``)."""
    root = Path(root)
    dirs = find_run_dirs(root)
    rows, configs, results = [], {}, {}
    for run_dir in tqdm(dirs, desc="reading runs", unit="run", disable=not progress or len(dirs) < 50):
        row, config, res = read_run(run_dir)
        rows.append(row)
        if config is not None:
            configs[str(run_dir)] = config
        if res is not None:
            results[str(run_dir)] = res
    duplicates = mark_duplicates(rows, configs, results)
    runs = pd.DataFrame(rows)
    for col in RUN_COLUMNS:
        if col not in runs.columns:
            runs[col] = pd.Series(dtype=object)
    invalid = []
    for status_file in sorted((root / INVALID).glob(f"*/{Files.STATUS}")):
        st, problem = read_record(RunFolder(status_file.parent), Files.STATUS)
        st = st or {}
        listed = st.get("problems") if isinstance(st.get("problems"), list) else []
        invalid.append({"status": "invalid", "config_file": st.get("config_file"),
                        "reason": problem or "; ".join(map(str, listed)) or st.get("reason"),
                        "run_dir": str(status_file.parent)})
    return RunSet(root, runs, configs, results, invalid, duplicates)
