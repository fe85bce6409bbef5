"""``python main.py status RESULTS [--sweep DIR]``: where the runs of a results root (or of a sweep) stand.

Counts completed / running / failed / interrupted / missing runs, and ``broken`` ones (a file unreadable,
or impossible numbers in results.json: :func:`runspec.folder.read_state`, the rule ``main.py report`` follows
too, so both give every run the same state); lists each running run with its host, epoch and the age of its
last heartbeat (``heartbeat.json``), each failed or broken one with its reason; flags
locks whose holder is gone (stale) and running runs whose heartbeat stopped; gives an ETA from the
recorded seconds per epoch, assuming the running runs go on in parallel and the rest run one at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runspec import RunSpec
from runspec.folder import Files, Heartbeat, RunFolder, find_run_dirs, read_state
from utils.locks import holder_is_gone, lock_holder, lock_path
from utils.progress import eta_text
from utils.schema import ConfigError

STALE_BEAT_SECONDS = 600.0


@dataclass
class SweepStatus:
    counts: dict[str, int] = field(default_factory=dict)
    running: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    broken: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)  # run folder -> state (as report's runs.csv)
    missing: list[str] = field(default_factory=list)
    stale_locks: list[str] = field(default_factory=list)
    remaining_seconds: float = 0.0


def _folders(root: Path, sweep: Path | None) -> tuple[list[RunFolder], dict[str, int]]:
    """The run folders to report on, and the sweep configs that have none: {config: training epochs}."""
    if sweep is None:
        return [RunFolder(d) for d in find_run_dirs(root)], {}
    folders: list[RunFolder] = []
    missing: dict[str, int] = {}
    for config in sorted(sweep.glob("*.json")):
        try:
            spec = RunSpec.load(config)
        except ConfigError:
            missing[f"{config} (invalid config)"] = 0
            continue
        folder = spec.folder(root)
        if folder.path.exists():
            folders.append(folder)
        else:
            missing[str(config)] = spec.config.training.num_steps
    return folders, missing


def _remaining(folder: RunFolder, beat: Heartbeat | None, per_epoch: float) -> float:
    if beat is not None and beat.epoch_seconds > 0:
        return max(beat.total_epochs - beat.epoch, 0) * beat.epoch_seconds
    config = folder.read_or_none(Files.CONFIG) or {}
    return config.get("training", {}).get("num_steps", 0) * per_epoch


def collect(root: str | Path, sweep: str | Path | None = None, now: float | None = None) -> SweepStatus:
    root, now = Path(root), time.time() if now is None else now
    folders, missing = _folders(root, None if sweep is None else Path(sweep))
    out = SweepStatus(missing=list(missing))
    waiting, running_left, seconds = [], [], []
    for folder in folders:
        run = read_state(folder)
        state = run.state
        out.states[str(folder.path)] = state
        out.counts[state] = out.counts.get(state, 0) + 1
        beat = Heartbeat.from_json(folder.read_or_none(Files.HEARTBEAT))
        if beat is not None and beat.epoch_seconds > 0:
            seconds.append(beat.epoch_seconds)
        lock = lock_path(folder.path)
        dead = lock.exists() and holder_is_gone(lock_holder(lock), lock)
        if dead:
            out.stale_locks.append(str(lock))
        if state == "running":
            age = now - beat.time if beat else None
            out.running.append({"run": str(folder.path), "host": beat.host if beat else "?",
                                "epoch": f"{beat.epoch}/{beat.total_epochs}" if beat else "?",
                                "heartbeat_age_s": age, "stale": dead or age is None or age > STALE_BEAT_SECONDS})
            running_left.append((folder, beat))
        elif state == "failed":
            out.failed.append({"run": str(folder.path), "reason": run.reason})
        elif state == "broken":
            out.broken.append({"run": str(folder.path), "reason": run.reason})
        if state not in ("completed", "running") and not folder.is_completed():  # the runner skips the others
            waiting.append((folder, beat))
    per_epoch = sum(seconds) / len(seconds) if seconds else 0.0
    parallel = max((_remaining(f, b, per_epoch) for f, b in running_left), default=0.0)
    out.remaining_seconds = (parallel + sum(_remaining(f, b, per_epoch) for f, b in waiting)
                             + sum(missing.values()) * per_epoch)
    out.counts["missing"] = len(missing)
    return out


def render(status: SweepStatus) -> str:
    order = ("completed", "running", "failed", "interrupted", "missing")
    counts = ", ".join(f"{status.counts.get(k, 0)} {k}" for k in order)
    others = {k: v for k, v in status.counts.items() if k not in order}
    lines = [counts + ("".join(f", {v} {k}" for k, v in others.items()))]
    for r in status.running:
        age = "no heartbeat" if r["heartbeat_age_s"] is None else f"heartbeat {r['heartbeat_age_s']:.0f}s ago"
        lines.append(f"  running  {r['run']}  on {r['host']}, epoch {r['epoch']}, {age}"
                     + ("  (STALE: the process may be gone)" if r["stale"] else ""))
    lines += [f"  failed   {r['run']}: {r['reason']}" for r in status.failed]
    lines += [f"  broken   {r['run']}: {r['reason']}" for r in status.broken]
    lines += [f"  missing  {m}" for m in status.missing]
    lines += [f"  stale lock {lock} (its process is gone; the next run takes it over)" for lock in status.stale_locks]
    if status.remaining_seconds:
        lines.append(f"ETA {eta_text(status.remaining_seconds)} (from the recorded seconds per epoch; running runs "
                     "in parallel, the rest one after another)")
    return "\n".join(lines)
