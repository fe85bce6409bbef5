"""Read run folders into a pandas table (one row per run), never training anything.

Run folders are found and read through the shared schema (:mod:`runspec.folder`).  Each run's *group* is
the hash of its identity (:meth:`spec.RunSpec.identity`: the non-default values that change results)
without the seed: runs with the same group differ only in the seed and are the ones averaged together.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

import compressors
from runspec import RunSpec, identity_hash, non_identity_fields
from runspec.folder import INVALID, Files, RunFolder, find_run_dirs
from utils.registry import UnknownName
from utils.schema import ConfigError

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


def _get(tree: Any, *keys: str) -> Any:
    """``tree[k1][k2]...``, or None where a level is missing or not an object."""
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _read(folder: RunFolder, name: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(content, problem)`` of one JSON file of a run folder: (None, None) when it is absent."""
    path = folder.file(name)
    if not path.exists():
        return None, None
    try:
        data = folder.read(name)
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{name} is unreadable ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(data, dict):
        return None, f"{name} holds {type(data).__name__}, not an object"
    return data, None


def _config_problem(cfg: dict[str, Any]) -> str | None:
    """What makes a config unusable for a table (the row and column keys of the wrong type), if anything."""
    checks = {("dataset", "class"): str, ("model", "class"): str, ("training", "compressor", "class"): str,
              ("training", "compressor", "sparsity"): (int, float), ("training", "compressor", "warmup"): int,
              ("general", "seed"): int}
    for keys, kind in checks.items():
        value = _get(cfg, *keys)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"config.json: {'.'.join(keys)} is {value!r}, not {'a string' if kind is str else 'a number'}"
    sparsity = _get(cfg, "training", "compressor", "sparsity")
    if not (math.isfinite(sparsity) and 0 <= sparsity < 1):
        return f"config.json: training.compressor.sparsity is {sparsity!r}, outside [0, 1)"
    return None


def _results_problem(results: dict[str, Any]) -> str | None:
    """A number in ``results.json`` that is not finite (a damaged file): such a run is never averaged."""
    bad = [k for k, v in results.items() if isinstance(v, float) and not math.isfinite(v)]
    return f"results.json: {', '.join(bad)} not finite ({results[bad[0]]!r})" if bad else None


def _row(run_dir: Path, config: dict[str, Any] | None, status: dict[str, Any] | None,
         results: dict[str, Any] | None, problems: list[str]) -> dict[str, Any]:
    cfg = config or {}
    comp = _get(cfg, "training", "compressor") or {}
    opts = comp.get("options") or {}
    st = (status or {}).get("status") or ("completed" if results is not None else "unknown")
    reason = (status or {}).get("reason")
    if status is None and results is None:
        reason = "no status.json: the run is just starting, or was never started by the runner"
    if st == "completed" and results is None:
        st, reason = "broken", "status says completed but results.json is missing or unreadable"
    if config is None:
        reason = reason or "config.json is missing or unreadable"
    problems = problems + [p for p in (config and _config_problem(cfg), results and _results_problem(results)) if p]
    if problems or not isinstance(st, str):
        st, reason = "broken", "; ".join(problems) or f"status.json: status is {st!r}"
    usable = st != "broken"
    row: dict[str, Any] = {
        "dataset": _get(cfg, "dataset", "class") if usable else None,
        "model": _get(cfg, "model", "class") if usable else None,
        "criterion": comp.get("class") if usable else None,
        "mask": comp.get("mask") if usable else None,
        "warmup": comp.get("warmup") if usable else None,
        "sparsity": (0.0 if is_dense(comp.get("class")) else comp.get("sparsity")) if usable else None,
        "seed": _get(cfg, "general", "seed") if usable else None,
        "options_seed": opts.get("seed") if isinstance(opts, dict) and usable else None,
        "status": st,
        "reason": reason,
        "group": group_hash(cfg) if config is not None and usable else None,
        "run_dir": str(run_dir),
        "config_file": (status or {}).get("config_file") if isinstance((status or {}).get("config_file"), str)
        else None,
    }
    for key, value in (results or {}).items() if usable else ():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = value
    return row


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """``(row, config, results)`` of one run folder; anything wrong with its files makes the row ``broken``
    with the reason (the folder is listed among the report's issues), never an exception."""
    folder = RunFolder(run_dir)
    try:
        (config, p1), (status, p2), (res, p3) = (_read(folder, f) for f in (Files.CONFIG, Files.STATUS, Files.RESULTS))
        problems = [p for p in (p1, p2, p3) if p]
        row = _row(run_dir, config, status, res, problems)
    except Exception as exc:  # noqa: BLE001 - one garbage folder never stops a report
        row = _row(run_dir, None, None, None, [f"cannot be read ({type(exc).__name__}: {exc})"])
        config = res = None
    if row["status"] == "broken":
        return row, None, None
    return row, config, res


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
    runs = pd.DataFrame(rows)
    for col in RUN_COLUMNS:
        if col not in runs.columns:
            runs[col] = pd.Series(dtype=object)
    invalid = []
    for status_file in sorted((root / INVALID).glob(f"*/{Files.STATUS}")):
        st, problem = _read(RunFolder(status_file.parent), Files.STATUS)
        st = st or {}
        listed = st.get("problems") if isinstance(st.get("problems"), list) else []
        invalid.append({"status": "invalid", "config_file": st.get("config_file"),
                        "reason": problem or "; ".join(map(str, listed)) or st.get("reason"),
                        "run_dir": str(status_file.parent)})
    return RunSet(root, runs, configs, results, invalid)
