"""Batch execution of config files: skip completed runs, resume interrupted ones, rerun failed ones,
record every failure and keep going.  A run folder is claimed with a lock file while it runs
(:func:`utils.results.run_lock`), so two processes given the same config never run it at once: the
second reports the run ``busy`` and goes on.

A run's status lives in its run folder (:mod:`utils.results`).  A config that cannot even be resolved
(bad field, unknown name) has no run folder; its failure is recorded under
``<root>/invalid/<file-stem>-<hash of its path>/status.json`` and removed once the file is fixed.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import trainers
from utils.config import ExperimentConfig, load_config
from utils.environment import environment
from utils.io import write_json
from utils.resolve import resolve
from utils.results import RunBusy, RunStore, run_dir, run_lock
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


def results_root(cfg: ExperimentConfig, override: str | Path | None) -> Path:
    """--results beats general.output_dir beats ./results."""
    if override is not None:
        return Path(override)
    return Path(cfg.general.output_dir) if cfg.general.output_dir else DEFAULT_RESULTS


def _invalid_dir(root: Path, path: Path) -> Path:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return root / "invalid" / f"{path.stem}-{digest}"


def _sigterm_to_interrupt(signum, frame):  # noqa: ANN001
    raise Interrupted(f"signal {signum}")


def run_config(path: Path, *, results: str | Path | None = None, force: bool = False,
               log: Callable[[str], None] = print, on_epoch_end: Callable | None = None) -> RunOutcome:
    """Run one config file; never raises except on interruption (Ctrl-C / SIGTERM)."""
    tic = time.perf_counter()
    try:
        cfg = resolve(load_config(path), str(path), build_model=False)
    except ConfigError as exc:
        root = Path(results) if results is not None else DEFAULT_RESULTS
        bad = RunStore(_invalid_dir(root, path))
        bad.set_status("failed", config_file=str(path), reason="invalid config",
                       problems=[str(p) for p in exc.problems])
        return RunOutcome(str(path), "failed", str(bad.path), reason="; ".join(str(p) for p in exc.problems))
    root = results_root(cfg, results)
    shutil.rmtree(_invalid_dir(root, path), ignore_errors=True)
    resolved = cfg.to_dict()
    store = RunStore(run_dir(root, resolved), cache_dir=root / "score_cache")
    outcome = RunOutcome(str(path), "completed", str(store.path), cfg.training.compressor.name,
                         cfg.training.compressor.sparsity, cfg.general.seed)
    status = store.status()
    if store.is_completed() and not force:
        results_json = store.read("results.json")
        outcome.status = "skipped"
        _fill_results(outcome, results_json)
        return outcome
    try:
        with run_lock(store.path):
            return _run_claimed(path, cfg, resolved, store, status, outcome, tic, force=force, log=log,
                                on_epoch_end=on_epoch_end)
    except RunBusy as busy:
        outcome.status, outcome.reason = "busy", str(busy)
        return outcome


def _run_claimed(path: Path, cfg: ExperimentConfig, resolved: dict[str, Any], store: RunStore,
                 status: dict[str, Any] | None, outcome: RunOutcome, tic: float, *, force: bool,
                 log: Callable[[str], None], on_epoch_end: Callable | None) -> RunOutcome:
    """The part of :func:`run_config` that runs while this process holds the run folder's lock."""
    if store.is_completed() and not force:  # finished by another process while we waited for the lock
        outcome.status = "skipped"
        _fill_results(outcome, store.read("results.json"))
        return outcome
    if force or (status and status.get("status") == "failed"):
        shutil.rmtree(store.path, ignore_errors=True)  # start over: nothing stale survives
    resuming = store.file("checkpoint.pt").exists()
    store.path.mkdir(parents=True, exist_ok=True)
    store.write("config.json", resolved)
    trainer_cls = trainers.get(cfg.general.experiment)
    trainer = trainer_cls(cfg, store, on_epoch_end=on_epoch_end, log=log)
    store.write("environment.json", environment(trainer.device))
    attempts = (status or {}).get("attempts", 0) + 1
    store.set_status("running", config_file=str(path), started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                     attempts=attempts, resumed=resuming)
    log(f"[{path}] -> {store.path}")
    try:
        res = trainer.run(resume=True)
    except KeyboardInterrupt:
        store.set_status("interrupted", reason="interrupted (Ctrl-C or SIGTERM); rerun to resume",
                         seconds=time.perf_counter() - tic)
        raise
    except Exception as exc:  # noqa: BLE001 - any crash is recorded and the batch goes on
        store.set_status("failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                         seconds=time.perf_counter() - tic)
        outcome.status, outcome.reason = "failed", f"{type(exc).__name__}: {exc}"
        outcome.seconds = time.perf_counter() - tic
        return outcome
    outcome.seconds = time.perf_counter() - tic
    store.set_status("completed", seconds=outcome.seconds, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
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
    write_json(root / "batches" / f"{time.strftime('%Y%m%d-%H%M%S')}.json",
               [o.__dict__ for o in outcomes])
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
