"""``python main.py status RESULTS [--sweep DIR]``: where the runs of a results root (or of a sweep) stand.

Counts completed / running / failed / interrupted / missing runs, and ``broken`` ones (a file unreadable,
or impossible numbers in results.json: :func:`runspec.folder.read_state`, the rule ``main.py report`` follows
too, so both give every run the same state); lists each running run with its host, epoch and the age of its
last heartbeat (``heartbeat.json``), each failed or broken one with its reason, and completed folders that
are copies of another completed run as ``duplicate`` (:func:`runspec.copies.mark_duplicates`, as ``report``
counts them); flags
locks whose holder is gone (stale) and running runs whose heartbeat stopped; gives an ETA from the
recorded seconds per epoch, assuming the running runs go on in parallel and the rest run one at a time.

Disk use (:func:`disk_use`): the bytes of the results root (with ``--sweep``: of the sweep's run folders), per
run state and per kind of file (:func:`file_kind`: checkpoint, model, mask, logs, records, cache, other), from
``os.lstat`` alone: no file is opened for it, a hard-linked file is counted once, links are not followed.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from runspec import RunSpec
from runspec.copies import mark_duplicates
from runspec.folder import BATCHES, INVALID, SCORE_CACHE, Files, Heartbeat, RunFolder, find_run_dirs, read_state
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
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # copies of a completed run (report's rule)
    states: dict[str, str] = field(default_factory=dict)  # run folder -> state (as report's runs.csv)
    missing: list[str] = field(default_factory=list)
    stale_locks: list[str] = field(default_factory=list)
    remaining_seconds: float = 0.0
    disk: DiskUse | None = None


KINDS = ("checkpoint", "model", "mask", "logs", "records", "cache", "other")
CHECKPOINT_FILES = (Files.CHECKPOINT, Files.CHECKPOINT_PREV)
LOG_FILES = (Files.HISTORY, Files.HISTORY_CSV, Files.RECORDS, Files.RECORDS_CSV, Files.HEARTBEAT)
LOG_FOLDERS = ("tensorboard", "wandb", "launch", "slurm", "mlruns", BATCHES, INVALID)


def file_kind(relative: PurePath) -> str:
    """The kind of a file from its path below the results root (no file is read): ``checkpoint``
    (``checkpoint.pt``, ``checkpoint.prev.pt``, their ``.damaged`` copies and unfinished temporary writes),
    ``model`` (``final_model.pt``), ``mask`` (``mask.pt``), ``logs`` (history, iterations, heartbeat,
    TensorBoard / W&B / MLflow files, launcher logs, batch and invalid-config records), ``records`` (the other
    JSON files of a run folder), ``cache`` (the score cache) or ``other``."""
    parts = relative.parts
    name = parts[-1]
    bare = name[1:].rsplit(".", 2)[0] if name.startswith(".") and name.endswith(".tmp") else name  # utils.io temp
    if parts[0] == SCORE_CACHE:
        return "cache"
    if bare in CHECKPOINT_FILES or (name.endswith(Files.DAMAGED) and name[:-len(Files.DAMAGED)] in CHECKPOINT_FILES):
        return "checkpoint"
    if bare == Files.FINAL_MODEL:
        return "model"
    if bare == Files.MASK:
        return "mask"
    if bare in LOG_FILES or any(p in LOG_FOLDERS for p in parts[:-1]) or name.endswith((".log", ".out", ".err")):
        return "logs"
    return "records" if name.endswith(".json") else "other"


@dataclass
class DiskUse:
    """Bytes (file sizes, ``st_size``) under a results root: ``total``; ``by_state``: run state -> [bytes, run
    folders]; ``beside_runs``: outside any run folder (score cache, launcher logs, batch records); ``by_kind``."""

    total: int = 0
    by_state: dict[str, list[int]] = field(default_factory=dict)
    beside_runs: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    sweep: bool = False


def disk_use(root: Path, states: dict[str, str], *, only_runs: bool = False) -> DiskUse:
    """The disk use of ``root`` from one walk of ``os.scandir`` (``lstat`` per entry, nothing opened); ``states``
    maps each run folder to its state (:attr:`SweepStatus.states`); ``only_runs``: count only those folders."""
    use = DiskUse(sweep=only_runs)
    seen: set[tuple[int, int]] = set()
    for state in states.values():
        use.by_state.setdefault(state, [0, 0])[1] += 1
    runs = {os.path.normpath(p): s for p, s in states.items()}

    def walk(folder: str, relative: tuple[str, ...], state: str | None) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            here = (*relative, entry.name)
            if stat.S_ISDIR(info.st_mode):
                walk(entry.path, here, state if only_runs else runs.get(os.path.normpath(entry.path), state))
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            if info.st_nlink > 1:
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
            use.total += info.st_size
            kind = file_kind(PurePath(*here))
            use.by_kind[kind] = use.by_kind.get(kind, 0) + info.st_size
            if state is None:
                use.beside_runs += info.st_size
            else:
                use.by_state[state][0] += info.st_size

    if only_runs:  # run folders never nest (runspec.folder.find_run_dirs)
        for path, state in runs.items():
            walk(path, PurePath(os.path.relpath(path, root)).parts, state)
    else:
        walk(str(root), (), runs.get(os.path.normpath(root)))
    return use


def size_text(size: float) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``179.0 MiB``, ``2.3 GiB``."""
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def disk_lines(use: DiskUse) -> list[str]:
    """The two ``disk`` lines of ``main.py status``: total and per state; per kind, the largest first."""
    order = [s for s in ("completed", "running", "failed", "interrupted", "broken", "unknown") if s in use.by_state]
    order += sorted(set(use.by_state) - set(order))
    states = ", ".join(f"{state} {size_text(b)} in {n}" for state, (b, n) in ((s, use.by_state[s]) for s in order))
    kinds = sorted(((b, k) for k, b in use.by_kind.items() if b), key=lambda x: (-x[0], KINDS.index(x[1])))
    total, states = size_text(use.total), states or "none"
    first = (f"disk {total} in the sweep's run folders: {states}" if use.sweep else
             f"disk {total}: runs {states}; beside the run folders {size_text(use.beside_runs)}")
    return [first,
            "disk by kind: " + (", ".join(f"{k} {size_text(b)}" for b, k in kinds) or "nothing")]


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
    completed: dict[str, Any] = {}
    for folder in folders:
        run = read_state(folder)
        state = run.state
        if state == "completed":
            completed[str(folder.path)] = run
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
    _mark_copies(out, completed)
    per_epoch = sum(seconds) / len(seconds) if seconds else 0.0
    parallel = max((_remaining(f, b, per_epoch) for f, b in running_left), default=0.0)
    out.remaining_seconds = (parallel + sum(_remaining(f, b, per_epoch) for f, b in waiting)
                             + sum(missing.values()) * per_epoch)
    out.counts["missing"] = len(missing)
    out.disk = disk_use(root, out.states, only_runs=sweep is not None)
    return out


def _mark_copies(out: SweepStatus, completed: dict[str, Any]) -> None:
    """Completed folders that are copies of another completed run become ``duplicate`` (the rule of
    ``report``: :func:`runspec.copies.mark_duplicates`), so both give every folder the same state."""
    rows = [{"run_dir": d, "status": "completed"} for d in completed]
    configs = {d: r.config for d, r in completed.items() if isinstance(r.config, dict)}
    results = {d: r.results for d, r in completed.items() if isinstance(r.results, dict)}
    if not mark_duplicates(rows, configs, results):
        return
    for row in rows:
        if row["status"] == "duplicate":
            out.states[row["run_dir"]] = "duplicate"
            out.counts["completed"] -= 1
            out.counts["duplicate"] = out.counts.get("duplicate", 0) + 1
            out.duplicates.append({"run": row["run_dir"], "reason": row["reason"]})


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
    lines += [f"  duplicate {r['run']}: {r['reason']}" for r in status.duplicates]
    lines += [f"  missing  {m}" for m in status.missing]
    lines += [f"  stale lock {lock} (its process is gone; the next run takes it over)" for lock in status.stale_locks]
    if status.remaining_seconds:
        lines.append(f"ETA {eta_text(status.remaining_seconds)} (from the recorded seconds per epoch; running runs "
                     "in parallel, the rest one after another)")
    if status.disk is not None:
        lines += disk_lines(status.disk)
    return "\n".join(lines)
