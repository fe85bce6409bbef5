"""Batch execution of config files: skip completed runs, resume interrupted ones, rerun failed ones,
record every failure and keep going.  A run folder is claimed with a lock file while it runs
(:func:`utils.locks.run_lock`), so two processes given the same config never run it at once: the
second reports the run ``busy`` and goes on.

A run's status lives in its run folder (:mod:`spec.folder`).  A config that cannot even be resolved
(bad field, unknown name) has no run folder; its failure is recorded under
``<root>/invalid/<file-stem>-<hash of its path>/status.json`` and removed once the file is fixed.
"""

from __future__ import annotations

import shutil
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from engine import execute
from spec import RunSpec
from spec.folder import Files, RunFolder, batch_record_path, invalid_dir
from utils.environment import environment
from utils.io import write_json
from utils.locks import RunBusy, run_lock
from utils.typed import ConfigError

DEFAULT_RESULTS = Path("results")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (e.g. a preempted cluster job)."""


@dataclass
class RunOutcome:
    config: str
    status: str  # completed | skipped | failed | interrupted | busy (another process holds the run)
    run_dir: str | None = None
    criterion: str | None = None
    sparsity: float | None = None
    seed: int | None = None
    test_acc: float | None = None
    best_val_test_acc: float | None = None
    collapsed_layers: int | None = None
    seconds: float = 0.0
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def collect_configs(paths: Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """Config files named directly, plus every ``*.json`` in named folders (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.rglob("*.json") if recursive else p.glob("*.json")))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def results_root(spec: RunSpec, override: str | Path | None) -> Path:
    """--results beats general.output_dir beats ./results."""
    if override is not None:
        return Path(override)
    out = spec.config.general.output_dir
    return Path(out) if out else DEFAULT_RESULTS


def _sigterm_to_interrupt(signum, frame):  # noqa: ANN001
    raise Interrupted(f"signal {signum}")


def run_config(path: Path, *, results: str | Path | None = None, force: bool = False,
               log: Callable[[str], None] = print, on_epoch_end: Callable | None = None) -> RunOutcome:
    """Run one config file; never raises except on interruption (Ctrl-C / SIGTERM)."""
    tic = time.perf_counter()
    try:
        spec = RunSpec.load(path)
    except ConfigError as exc:
        root = Path(results) if results is not None else DEFAULT_RESULTS
        bad = RunFolder(invalid_dir(root, path))
        bad.set_status("failed", config_file=str(path), reason="invalid config",
                       problems=[str(p) for p in exc.problems])
        return RunOutcome(str(path), "failed", str(bad.path), reason="; ".join(str(p) for p in exc.problems))
    root = results_root(spec, results)
    shutil.rmtree(invalid_dir(root, path), ignore_errors=True)
    folder = spec.folder(root)
    comp = spec.config.training.compressor
    outcome = RunOutcome(str(path), "completed", str(folder.path), comp.name, comp.sparsity, spec.config.general.seed)
    if folder.is_completed() and not force:
        return _skipped(outcome, folder)
    try:
        with run_lock(folder.path):
            return _run_claimed(path, spec, folder, outcome, tic, force=force, log=log, on_epoch_end=on_epoch_end)
    except RunBusy as busy:
        outcome.status, outcome.reason = "busy", str(busy)
        return outcome


def _skipped(outcome: RunOutcome, folder: RunFolder) -> RunOutcome:
    outcome.status = "skipped"
    _fill_results(outcome, folder.read(Files.RESULTS))
    return outcome


def _run_claimed(path: Path, spec: RunSpec, folder: RunFolder, outcome: RunOutcome, tic: float, *, force: bool,
                 log: Callable[[str], None], on_epoch_end: Callable | None) -> RunOutcome:
    """The part of :func:`run_config` that runs while this process holds the run folder's lock."""
    if folder.is_completed() and not force:  # finished by another process while we waited for the lock
        return _skipped(outcome, folder)
    status = folder.status()
    if force or (status and status.get("status") == "failed"):
        shutil.rmtree(folder.path, ignore_errors=True)  # start over: nothing stale survives
        status = None
    resuming = folder.file(Files.CHECKPOINT).exists()
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write(Files.CONFIG, spec.to_dict())
    folder.write(Files.ENVIRONMENT, environment(spec.device()))
    attempts = (status or {}).get("attempts", 0) + 1
    folder.set_status("running", config_file=str(path), started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      attempts=attempts, resumed=resuming)
    log(f"[{path}] -> {folder.path}")
    try:
        res = execute(spec, folder, log=log, on_epoch_end=on_epoch_end)
    except KeyboardInterrupt:
        folder.set_status("interrupted", reason="interrupted (Ctrl-C or SIGTERM); rerun to resume",
                          seconds=time.perf_counter() - tic)
        raise
    except Exception as exc:  # noqa: BLE001 - any crash is recorded and the batch goes on
        folder.set_status("failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                          seconds=time.perf_counter() - tic)
        outcome.status, outcome.reason = "failed", f"{type(exc).__name__}: {exc}"
        outcome.seconds = time.perf_counter() - tic
        return outcome
    outcome.seconds = time.perf_counter() - tic
    folder.set_status("completed", seconds=outcome.seconds, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    _fill_results(outcome, res)
    return outcome


def _fill_results(outcome: RunOutcome, res: dict[str, Any]) -> None:
    outcome.test_acc = res.get("final_test_acc")
    outcome.best_val_test_acc = res.get("best_val_test_acc")
    outcome.collapsed_layers = len(res.get("layer_collapse") or [])


def run_batch(paths: Iterable[str | Path], *, results: str | Path | None = None, force: bool = False,
              recursive: bool = False, log: Callable[[str], None] = print) -> list[RunOutcome]:
    """Run every config; Ctrl-C / SIGTERM marks the current run interrupted and stops the batch."""
    configs = collect_configs(paths, recursive)
    outcomes: list[RunOutcome] = []
    previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        for i, path in enumerate(configs, 1):
            log(f"({i}/{len(configs)}) {path}")
            try:
                outcome = run_config(path, results=results, force=force, log=log)
            except KeyboardInterrupt:
                outcomes.append(RunOutcome(str(path), "interrupted", reason="interrupted"))
                break
            if outcome.status == "failed":
                log(f"  FAILED: {outcome.reason}")
            elif outcome.status == "skipped":
                log("  already completed (same resolved config); skipped (use --force to rerun)")
            elif outcome.status == "busy":
                log(f"  BUSY: {outcome.reason}")
            outcomes.append(outcome)
    finally:
        signal.signal(signal.SIGTERM, previous)
    root = Path(results) if results is not None else DEFAULT_RESULTS
    write_json(batch_record_path(root), [o.__dict__ for o in outcomes])
    return outcomes


def summary_table(outcomes: list[RunOutcome]) -> str:
    """The end-of-batch table: one line per config."""
    head = ("config", "status", "criterion", "sparsity", "seed", "test_acc", "best_val_test_acc",
            "collapsed_layers", "time_s")
    rows = []
    for o in outcomes:
        fmt = (lambda v: "-" if v is None else f"{v:.4f}")
        rows.append((Path(o.config).name, o.status, o.criterion or "-",
                     "-" if o.sparsity is None else f"{o.sparsity:g}", "-" if o.seed is None else str(o.seed),
                     fmt(o.test_acc), fmt(o.best_val_test_acc),
                     "-" if o.collapsed_layers is None else str(o.collapsed_layers), f"{o.seconds:.1f}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out = [line, "-" * len(line)] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    failed = [o for o in outcomes if o.status in ("failed", "interrupted", "busy")]
    for o in failed:
        out.append(f"{o.status.upper()}: {o.config}: {o.reason}")
    return "\n".join(out)
