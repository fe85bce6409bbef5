"""Sweeps: expand a base config over a grid of field values and write one validated config per point.

    python main.py sweep BASE.json --set compressor.class=snip,random --set compressor.sparsity=0.9,0.95 \
        --set general.seed=0,42,123 --out exp_configs/my_grid --with-dense

:mod:`sweeps.grid` expands (pure, no disk); :mod:`sweeps.write` validates everything, then writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from runspec.config import read_config_file
from sweeps.grid import ALIASES, SHORTCUTS, Axis, SweepPoint, SweepSpecError, expand, expand_path, parse_set
from sweeps.write import SweepResult, validate_points, write_sweep
from utils.schema import ConfigError, Problem

__all__ = ["ALIASES", "SHORTCUTS", "Axis", "SweepPoint", "SweepSpecError", "expand", "expand_path", "parse_set",
           "SweepResult", "validate_points", "write_sweep", "sweep"]


def sweep(base_file: str | Path, sets: list[str], out: str | Path, *, with_dense: bool = False,
          overwrite: bool = False, dry_run: bool = False,
          log: Callable[[str], None] = print) -> SweepResult:
    """Read the base config, expand ``sets`` (``PATH=V1,V2`` strings), validate and write; log a summary."""
    try:
        base = read_config_file(base_file)
    except ConfigError as exc:
        return _report(SweepResult(problems=exc.problems), 0, out, log)
    if not isinstance(base, dict):
        return _report(SweepResult(problems=[Problem("", "the base config must be a JSON object", str(base_file))]),
                       0, out, log)
    try:
        axes = [parse_set(s) for s in sets]
        points = expand(base, axes, with_dense=with_dense)
    except SweepSpecError as exc:
        return _report(SweepResult(problems=[Problem("", str(exc), str(base_file))]), 0, out, log)
    result = write_sweep(points, Path(out), overwrite=overwrite, dry_run=dry_run)
    if not result.problems:
        verb = "would write" if dry_run else "wrote"
        dense = sum(p.dense for p in points)
        log(f"{len(points)} configs in {out}: {verb} {len(result.written)} new, "
            f"{len(result.overwritten)} overwritten, {len(result.unchanged)} unchanged"
            + (f" ({dense} dense baselines)" if with_dense else ""))
        return result
    return _report(result, len(points), out, log)


def _report(result: SweepResult, n: int, out: str | Path, log: Callable[[str], None]) -> SweepResult:
    for p in result.problems:
        log(f"  - {p}")
    log(f"{n} grid points, {len(result.problems)} problem(s): nothing written to {out}")
    return result
