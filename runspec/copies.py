"""Copies of one run: completed run folders with the same run identity, reached through several paths
(a results root copied under a sub-folder, two results roots below the one read).  ``report`` counts each
run once and lists the copies as ``duplicate``; ``status`` gives them the same state (:func:`mark_duplicates`,
the one rule both follow)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from runspec.spec import RunSpec, identity_hash, non_identity_fields
from utils.schema import ConfigError

SEED_FIELD = "general.seed"
SEED = ("general", "seed")


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


def results_digest(results: dict[str, Any]) -> str:
    """SHA-256 of a results.json's content (canonical JSON: the same numbers give the same digest)."""
    return hashlib.sha256(json.dumps(results, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def mark_duplicates(rows: list[dict[str, Any]], configs: dict[str, dict[str, Any]],
                    results: dict[str, dict[str, Any]]) -> int:
    """Completed runs of one run identity (the hash of :meth:`spec.RunSpec.identity`, seed included: the
    ``<hash>`` of ``seed_<n>-<hash>``) reached through several folders (copies under sub-folders, or two
    results roots below the one reported): the first (by path) is counted, the others become ``duplicate``
    with the counted folder and whether their results.json content is the same.  Returns how many."""
    first: dict[str, tuple[str, str]] = {}
    marked = 0
    for row in sorted(rows, key=lambda r: r["run_dir"]):
        if row["status"] != "completed" or row["run_dir"] not in configs:
            continue
        identity = group_hash(configs[row["run_dir"]], without=())
        digest = results_digest(results.get(row["run_dir"], {}))
        if identity not in first:
            first[identity] = (row["run_dir"], digest)
            continue
        kept, kept_digest = first[identity]
        same = ("identical results.json" if digest == kept_digest else
                f"different results.json (sha256 {digest[:12]} here, {kept_digest[:12]} there: a rerun?)")
        row["status"] = "duplicate"
        row["reason"] = f"the same run (identity {identity}) as {kept}, {same}: counted once, as {kept}"
        marked += 1
    return marked
