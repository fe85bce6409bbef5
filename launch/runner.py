"""Batch execution of config files: skip completed runs, resume interrupted and failed ones from their last
good checkpoint, record every failure and keep going.  A run folder is claimed with a lock file while it
runs (:func:`utils.locks.run_lock`), so two processes given the same config never run it at once: the
second reports the run ``busy`` and goes on.

A run's status lives in its run folder (:mod:`runspec.folder`); the failures of earlier attempts stay in its
``history``.  ``restart`` starts unfinished runs over, ``force`` every run.  A config that cannot even be
resolved (bad field, unknown name) has no run folder; its failure is recorded under
``<root>/invalid/<file-stem>-<hash of its path>/status.json`` and removed once the file is fixed.  Any
error while reading one config or one run folder is that config's failure, never the batch's.

A run whose status says completed is skipped only when the files the end of a run writes are sound
(:func:`completed_damage`: ``config.json`` and ``results.json`` readable and possible, ``mask.pt`` and
``final_model.pt`` present with a matching content digest).  Otherwise it is repaired from its intact
``checkpoint.pt`` at the end of the run, without training (:func:`engine.execute` with ``repair``), or, with
no such checkpoint, refused with a failure that says to use ``--force``; either is noted in ``status.json``.
A completed run keeps ``checkpoint.pt`` unless ``general.keep.checkpoint`` is ``"none"``
(:func:`engine.finish.release_checkpoints`); the refusal then says that the checkpoint was not kept.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from engine import execute
from engine.finish import checkpoint_not_kept, release_checkpoints
from runspec import RunSpec
from runspec.folder import (
    Files,
    RunFolder,
    StatusRecord,
    batch_record_path,
    config_problems,
    invalid_dir,
    read_record,
    read_state,
    results_problems,
    results_root,
)
from utils import distributed
from utils.io import IntegrityError, check_digest, json_files, load_torch, write_json
from utils.locks import RunBusy, run_lock
from utils.schema import ConfigError, Problem

Overrides = Sequence[tuple[str, Any]]  # (dotted path, value): main.py run --set
TASK_LOG = "PAI_TASK_LOG"  # set by a launcher task: its log file, recorded in status.json


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
    id: str | None = None  # general.id (default: the config file's name)


def collect_configs(paths: Iterable[str | Path], recursive: bool = False,
                    log: Callable[[str], None] | None = None) -> list[Path]:
    """Config files named directly, plus every visible ``*.json`` file in named folders (sorted; hidden
    files such as macOS ``._*.json`` skipped; a folder named ``*.json`` is a folder, read only with
    ``recursive``).  Each file is listed once however often it is reached (by its resolved path; ``log``
    is told of the repeats and of the ``*.json`` folders left out).  A dangling link is listed: reading it
    is that config's failure."""
    out: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found = json_files(p, recursive)
            if log is not None and not recursive:
                for d in sorted(q for q in p.glob("*.json") if q.is_dir() and not q.name.startswith(".")):
                    log(f"{d}: a folder, not a config file: left out (--recursive reads the configs inside it)")
        elif p.exists() or p.is_symlink():
            found = [p]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
        for f in found:
            key = f.resolve() if f.exists() else f.absolute()
            if key in seen:
                if log is not None:
                    log(f"{f}: already listed; run once")
                continue
            seen.add(key)
            out.append(f)
    return out


def _sigterm_to_interrupt(signum, frame):  # noqa: ANN001
    raise Interrupted(f"signal {signum}")


def run_config(path: Path, *, results: str | Path | None = None, force: bool = False, restart: bool = False,
               log: Callable[[str], None] = print, on_epoch_end: Callable | None = None,
               overrides: Overrides = ()) -> RunOutcome:
    """Run one config file; never raises except on interruption (Ctrl-C / SIGTERM): any other error is
    this config's failure (``force``: rerun a completed run; ``restart``: start an unfinished one over;
    ``overrides``: ``(dotted path, value)`` pairs set in the config first, ``main.py run --set``)."""
    tic = time.perf_counter()
    try:
        return _run_config(Path(path), results, tic, force=force, restart=restart, log=log,
                           on_epoch_end=on_epoch_end, overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - one bad file or folder never stops the batch
        return RunOutcome(str(path), "failed", reason=f"{type(exc).__name__}: {exc}",
                          seconds=time.perf_counter() - tic)


def _run_config(path: Path, results: str | Path | None, tic: float, *, force: bool, restart: bool,
                log: Callable[[str], None], on_epoch_end: Callable | None, overrides: Overrides) -> RunOutcome:
    try:
        spec = RunSpec.load(path, overrides=overrides)
    except ConfigError as exc:
        return _invalid(path, results, exc.problems)
    root = results_root(results, spec.config.general.output_dir)
    shutil.rmtree(invalid_dir(root, path), ignore_errors=True)
    folder = spec.folder(root)
    outcome = outcome_of(path, spec, folder)
    if not force and completed_damage(folder) == []:
        return _skipped(outcome, folder)
    rank = distributed.from_environment()
    if rank.distributed and not rank.main:
        return _run_as_other_rank(rank, spec, folder, outcome, tic)
    ready = _signal_ranks(rank, spec) if rank.distributed else None
    try:
        with run_lock(folder.path):
            return _run_claimed(path, spec, folder, outcome, tic, force=force, restart=restart, log=log,
                                on_epoch_end=on_epoch_end, ready=ready)
    except RunBusy as busy:
        if ready is not None:
            ready(False)
        outcome.status, outcome.reason = "busy", str(busy)
        return outcome


def outcome_of(path: Path, spec: RunSpec, folder: RunFolder) -> RunOutcome:
    """A run's outcome with what its config says (status completed until told otherwise)."""
    comp = spec.config.training.compressor
    return RunOutcome(str(path), "completed", str(folder.path), comp.name, comp.sparsity, spec.config.general.seed,
                      id=spec.config.general.id)


def skipped_outcome(path: Path, results: str | Path | None = None, overrides: Overrides = ()) -> RunOutcome:
    """The outcome of a completed run that a launcher does not run again: its recorded results."""
    spec = RunSpec.load(path, overrides=overrides)
    folder = spec.folder(results_root(results, spec.config.general.output_dir))
    return _skipped(outcome_of(Path(path), spec, folder), folder)


def _signal_ranks(rank: distributed.Rank, spec: RunSpec) -> Callable[[bool], None]:
    """For rank 0 of a distributed run: tell the other ranks whether the folder is ready to train in."""
    device = spec.device()
    distributed.init(rank, device.type)
    return lambda go=True: distributed.all_sum(rank, [1.0 if go else 0.0], device) and None


def _run_as_other_rank(rank: distributed.Rank, spec: RunSpec, folder: RunFolder, outcome: RunOutcome,
                       tic: float) -> RunOutcome:
    """A rank other than 0: wait until rank 0 has claimed and prepared the run folder, then train with it
    (rank 0 writes every file and records the outcome)."""
    device = spec.device()
    distributed.init(rank, device.type)
    if not distributed.all_sum(rank, [0.0], device)[0]:
        outcome.status, outcome.reason = "busy", "rank 0 did not start the run"
        return outcome
    res = execute(spec, folder, log=lambda text: None)
    outcome.seconds = time.perf_counter() - tic
    fill_results(outcome, res)
    return outcome


def problems_text(problems: list[Problem]) -> str:
    """The problems of one config without its file name (which the lines around them already show)."""
    return "; ".join(f"{p.path or '<root>'}: {p.message}" for p in problems)


def _invalid(path: Path, results: str | Path | None, problems: list[Problem]) -> RunOutcome:
    root = results_root(results)
    bad = RunFolder(invalid_dir(root, path))
    bad.set_status("failed", config_file=str(path), reason="invalid config", problems=[str(p) for p in problems])
    return RunOutcome(str(path), "failed", str(bad.path), reason=problems_text(problems), id=path.stem)


def _skipped(outcome: RunOutcome, folder: RunFolder) -> RunOutcome:
    outcome.status = "skipped"
    fill_results(outcome, folder.read(Files.RESULTS))
    return outcome


def _run_claimed(path: Path, spec: RunSpec, folder: RunFolder, outcome: RunOutcome, tic: float, *, force: bool,
                 restart: bool, log: Callable[[str], None], on_epoch_end: Callable | None,
                 ready: Callable[[bool], None] | None = None) -> RunOutcome:
    """The part of :func:`run_config` that runs while this process holds the run folder's lock (``ready``:
    called once the folder is prepared, to let the other ranks of a distributed run start)."""
    damage = None if force else completed_damage(folder)
    if damage == []:  # finished (or repaired) by another process while we waited for the lock
        return _skipped(outcome, folder)
    if damage:
        return _repair(spec, folder, outcome, tic, damage, log=log, ready=ready)
    if force or restart:
        shutil.rmtree(folder.path, ignore_errors=True)  # start over: nothing stale survives
    status = StatusRecord.from_json(folder.status()) or StatusRecord()
    resuming = any(folder.file(f).exists() for f in (Files.CHECKPOINT, Files.CHECKPOINT_PREV))
    try:
        folder.path.mkdir(parents=True, exist_ok=True)  # config.json and environment.json: engine.assemble
        folder.set_status("running", config_file=str(path), started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                          attempts=status.attempts + 1, resumed=resuming, log=os.environ.get(TASK_LOG))
        log(f"[{path}] -> {folder.path}" + (" (resuming)" if resuming else "")
            + f"; compat: {spec.config.general.compat}")
        if ready is not None:
            ready(True)
        res = execute(spec, folder, log=log, on_epoch_end=on_epoch_end)
    except KeyboardInterrupt:
        folder.set_status("interrupted", reason="interrupted (Ctrl-C or SIGTERM); rerun to resume",
                          seconds=time.perf_counter() - tic)
        raise
    except SystemExit:  # a launcher's task stopped for a requeue (time limit, preemption)
        folder.set_status("interrupted", reason="stopped by the scheduler and requeued; it resumes when it restarts",
                          seconds=time.perf_counter() - tic)
        raise
    except Exception as exc:  # noqa: BLE001 - any crash is recorded and the batch goes on
        outcome.status, outcome.reason = "failed", f"{type(exc).__name__}: {exc}"
        outcome.seconds = time.perf_counter() - tic
        _record_failure(folder, outcome, traceback.format_exc(), log)
        return outcome
    outcome.seconds = time.perf_counter() - tic
    folder.set_status("completed", seconds=outcome.seconds, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    release_checkpoints(folder, spec.config.general.keep)  # checkpoint.prev.pt; checkpoint.pt too if not kept
    fill_results(outcome, res)
    return outcome


def _torch_file_problem(folder: RunFolder, name: str) -> str | None:
    """Why the torch file ``name`` of a run folder is not sound (None: it is): missing, unreadable, or its
    content digest does not match (a file of an older version without a digest is sound if torch reads it)."""
    path = folder.file(name)
    if not path.is_file():
        return f"{name} is missing"
    try:
        check_digest(path)
    except IntegrityError as exc:
        if exc.kind != "missing":
            return f"{name}: {exc.reason}"
        try:
            load_torch(path, verify=False)
        except Exception:  # noqa: BLE001 - truncated or not a torch file
            return f"{name}: {exc.reason}"
    except OSError as exc:
        return f"{name} is unreadable ({type(exc).__name__}: {exc})"
    return None


def completed_damage(folder: RunFolder) -> list[str] | None:
    """None when ``status.json`` does not say completed; else what is wrong with the files the end of the run
    wrote, one line each (empty: the run is sound and is skipped): ``config.json`` and ``results.json``
    missing, unreadable or impossible (the rule of :func:`runspec.folder.read_state`), ``mask.pt`` or
    ``final_model.pt`` missing, unreadable or damaged."""
    status = folder.status()
    if not status or status.get("status") != "completed":
        return None
    problems: list[str] = []
    for name, check in ((Files.CONFIG, config_problems), (Files.RESULTS, results_problems)):
        data, problem = read_record(folder, name)
        problems += [problem] if problem else [f"{name} is missing"] if data is None else check(data)
    problems += [p for p in (_torch_file_problem(folder, n) for n in (Files.MASK, Files.FINAL_MODEL)) if p]
    if not problems and (state := read_state(folder)).state == "broken":
        problems.append(state.reason or "broken")
    return problems


def _repair(spec: RunSpec, folder: RunFolder, outcome: RunOutcome, tic: float, damage: list[str], *,
            log: Callable[[str], None], ready: Callable[[bool], None] | None) -> RunOutcome:
    """Rebuild the damaged end-of-run files of a completed run from its checkpoint (no stage runs again), or
    refuse, saying why and to use --force; either way noted in ``status.json``, whose status stays completed."""
    what = "; ".join(damage)
    problem = checkpoint_not_kept(folder) or _torch_file_problem(folder, Files.CHECKPOINT)
    if problem is None and ready is not None:
        problem = "a distributed run is repaired by a rerun in one process"
    if problem is None:
        log(f"  completed run damaged ({what}): repairing from {Files.CHECKPOINT}, without training")
        try:
            res = execute(spec, folder, log=log, repair=True)
        except Exception as exc:  # noqa: BLE001 - a refusal, recorded like any failure below
            problem = f"{type(exc).__name__}: {exc}"
    if ready is not None:
        ready(False)  # the other ranks do not train
    if problem is not None:
        text = (f"completed run damaged ({what}) and cannot be repaired: {problem}; rerun it with --force "
                "to train it again from scratch")
        log(f"  {text}")
        folder.note(text)
        outcome.status, outcome.reason, outcome.seconds = "failed", text, time.perf_counter() - tic
        return outcome
    text = f"repaired from {Files.CHECKPOINT} without training: {what}"
    log(f"  {text}")
    folder.note(text)
    release_checkpoints(folder, spec.config.general.keep)
    outcome.seconds = time.perf_counter() - tic
    outcome.extra["repaired"] = damage
    fill_results(outcome, res)
    return outcome


def _record_failure(folder: RunFolder, outcome: RunOutcome, trace: str, log: Callable[[str], None]) -> None:
    """``status.json`` says failed, with the reason and traceback (a disk too full even for that is logged)."""
    try:
        folder.set_status("failed", reason=outcome.reason, traceback=trace, seconds=outcome.seconds)
    except Exception as exc:  # noqa: BLE001 - the outcome still carries the reason
        log(f"  (could not record the failure in {folder.file(Files.STATUS)}: {exc})")


def fill_results(outcome: RunOutcome, res: Any) -> None:
    res = res if isinstance(res, dict) else {}
    number = (lambda v: v if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
    outcome.test_acc = number(res.get("final_test_acc"))
    outcome.best_val_test_acc = number(res.get("best_val_test_acc"))
    collapse = res.get("layer_collapse")
    outcome.collapsed_layers = len(collapse) if isinstance(collapse, list) else None


def run_batch(paths: Iterable[str | Path], *, results: str | Path | None = None, force: bool = False,
              restart: bool = False, recursive: bool = False, log: Callable[[str], None] = print,
              overrides: Overrides = ()) -> list[RunOutcome]:
    """Run every config; Ctrl-C / SIGTERM marks the current run interrupted and stops the batch.  The batch
    record ``<root>/batches/<time>.json`` is written in any case (a failure to write it is logged)."""
    configs = collect_configs(paths, recursive, log=log)
    outcomes: list[RunOutcome] = []
    previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        for i, path in enumerate(configs, 1):
            log(f"({i}/{len(configs)}) {path}")
            try:
                outcome = run_config(path, results=results, force=force, restart=restart, log=log,
                                     overrides=overrides)
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
    record_batch(outcomes, results, log)
    return outcomes


def record_batch(outcomes: list[RunOutcome], results: str | Path | None, log: Callable[[str], None] = print) -> None:
    """The batch record ``<root>/batches/<time>.json``: every outcome of one batch (a failure to write it is
    logged, never raised)."""
    try:
        if distributed.from_environment().main:  # one record per batch, not one per rank
            write_json(batch_record_path(results_root(results)), [o.__dict__ for o in outcomes])
    except OSError as exc:
        log(f"could not write the batch record: {exc}")


def summary_table(outcomes: list[RunOutcome]) -> str:
    """The end-of-batch table: one line per config."""
    head = ("config", "id", "status", "criterion", "sparsity", "seed", "test_acc", "best_val_test_acc",
            "collapsed_layers", "time_s")
    rows = []
    for o in outcomes:
        fmt = (lambda v: "-" if v is None else f"{v:.4f}")
        rows.append((Path(o.config).name, o.id or Path(o.config).stem, o.status, o.criterion or "-",
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
