"""Validate every grid point, then write them all (or nothing).

Each point is checked as a :class:`runspec.RunSpec` (fields, registry names, options; the model and the
criterion are built once per distinct dataset/model section to catch shape errors and bad criterion
options).  Two points that would run the same experiment (same run hash) are a problem too.  Only when no point has
a problem is anything written; an existing file with different content is a problem unless
``overwrite`` is set, an identical one is left alone.  Writing is all or nothing too: every file is first
written beside its target under a hidden temporary name, and only when all of them are written are they
renamed into place (a full disk or any error mid-way leaves the folder as it was).  A file name longer
than the file system allows (many or long axis values) is shortened to its start plus a digest of the
whole name, so it stays unique.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runspec import RunSpec
from sweeps.grid import SweepPoint
from utils.io import write_text
from utils.schema import ConfigError, Problem, to_dict


@dataclass
class SweepResult:
    """What :func:`write_sweep` did (or would have done): files by fate and every problem."""

    problems: list[Problem] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    overwritten: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def render(data: dict[str, Any]) -> str:
    """The JSON text written for a config: 2-space indent, key order of the base file kept, lists of
    numbers/strings on one line (``"lr_drops": [80, 120]``)."""
    return _render(data, 0) + "\n"


def _render(value: Any, depth: int) -> str:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_render(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _render(v, depth + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, separators=(", ", ": "))


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def file_name(stem: str) -> str:
    """``<stem>.json``, or, when that is longer than :data:`NAME_MAX` bytes (with room for the temporary
    name it is written under), the stem's start, ``-`` and the first 12 hex digits of its SHA-256."""
    limit = NAME_MAX - len(".json") - len(".tmp-") - 24
    if len(stem.encode("utf-8")) <= limit:
        return f"{stem}.json"
    digest = hashlib.sha256(stem.encode("utf-8")).hexdigest()[:12]
    head = stem.encode("utf-8")[:limit - 13].decode("utf-8", errors="ignore")
    return f"{head}-{digest}.json"


def validate_points(points: list[SweepPoint], out: Path) -> list[Problem]:
    """Every problem of every point (file and field named); an empty list means all are valid."""
    problems: list[Problem] = []
    by_name: dict[str, list[SweepPoint]] = {}
    for p in points:
        by_name.setdefault(p.name, []).append(p)
    for name, same in by_name.items():
        if len(same) > 1:
            problems.append(Problem("", "several grid points map to this file name: "
                                    + "; ".join(json.dumps(p.assignments) for p in same), str(out / file_name(name))))
    models_built: set[str] = set()
    criteria_built: set[str] = set()
    by_hash: dict[str, list[str]] = {}
    for p in points:
        file = str(out / file_name(p.name))
        try:
            spec = RunSpec.from_dict(p.data, file)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        cfg = spec.config
        model_key = json.dumps([cfg.dataset.name, to_dict(cfg.model)], sort_keys=True, default=str)
        crit_key = json.dumps([cfg.training.compressor.name, cfg.training.compressor.options], sort_keys=True)
        found = spec.build_problems(model=model_key not in models_built, criterion=crit_key not in criteria_built)
        problems.extend(found)
        models_built.add(model_key)
        criteria_built.add(crit_key)
        if not found:
            by_hash.setdefault(spec.hash(), []).append(file)
    for files in by_hash.values():
        if len(files) > 1:
            problems.append(Problem("", "these configs would run the same experiment (identical resolved config; "
                                        "e.g. the dense 'none' swept over sparsities - use --with-dense instead): "
                                    + ", ".join(files), files[0]))
    return problems


def write_sweep(points: list[SweepPoint], out: str | Path, *, overwrite: bool = False,
                dry_run: bool = False) -> SweepResult:
    """Validate all points, then write ``out/<name>.json`` for each (nothing is written on any problem)."""
    out = Path(out)
    result = SweepResult(problems=validate_points(points, out))
    plan: list[tuple[Path, str]] = []
    for p in points:
        target = out / file_name(p.name)
        text = render(p.data)
        if target.exists():
            try:
                same = json.loads(target.read_text(encoding="utf-8")) == p.data
            except (OSError, json.JSONDecodeError):
                same = False
            if same:
                result.unchanged.append(target)
                continue
            if not overwrite:
                result.problems.append(Problem("", "exists with different content; pass --overwrite to replace it",
                                               str(target)))
                continue
            result.overwritten.append(target)
        else:
            result.written.append(target)
        plan.append((target, text))
    if result.problems or dry_run:
        return result
    staged: list[tuple[Path, Path]] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for target, text in plan:
            temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            staged.append((temporary, target))
            write_text(temporary, text)
        for temporary, target in staged:
            os.replace(temporary, target)
    except OSError as exc:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        result.problems.append(Problem("", f"cannot write the configs ({exc.strerror or exc}); nothing was "
                                           "written", str(getattr(exc, "filename", None) or out)))
        result.written, result.overwritten = [], []
    return result
