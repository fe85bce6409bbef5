"""The run folder: every file name and record field that writers (engine, runner) and readers (report,
status) share, declared once (as open_lth's ``foundations/paths.py``).

Layout under a results root::

    <root>/<experiment>/<dataset>/<model>/<criterion>[-layer]/<sparsity|dense>/seed_<n>-<hash>/
    <root>/score_cache/          criterion scores shared by the runs of this root
    <root>/invalid/<stem>-<h>/   the failure record of a config too broken to have a run folder
    <root>/batches/<time>.json   one summary per batch

Files of a run folder are the attributes of :class:`Files`.  ``status.json`` is a :class:`StatusRecord`;
``results.json`` a :class:`RunResults` (flat JSON: test metrics, training times and the
:class:`PruningRecord` fields side by side, as earlier versions wrote it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from utils.io import csv_text, load_torch, read_json, save_torch, write_json, write_text

DEFAULT_RESULTS = Path("results")


def results_root(override: str | Path | None = None, output_dir: str | None = None) -> Path:
    """The results root runs go to, the one rule every writer and reader follows: ``--results``
    (``override``) beats the config's ``general.output_dir`` beats ``./results``."""
    if override is not None:
        return Path(override)
    return Path(output_dir) if output_dir else DEFAULT_RESULTS


SCORE_CACHE = "score_cache"
INVALID = "invalid"
BATCHES = "batches"
NOT_RUN_DIRS = (INVALID, BATCHES, SCORE_CACHE, "launch", "slurm", "mlruns")  # + launcher logs, MLflow store


class Files:
    """File names inside a run folder."""

    CONFIG = "config.json"            # the resolved config
    STATUS = "status.json"            # StatusRecord
    ENVIRONMENT = "environment.json"  # library versions, device, commit, command line
    HISTORY = "history.json"          # one row per training epoch (and history.csv)
    HISTORY_CSV = "history.csv"
    RECORDS = "iterations.json"       # one row per experiment event (irp iterations, pat phases)
    RECORDS_CSV = "iterations.csv"
    RESULTS = "results.json"          # RunResults
    MASK = "mask.pt"                  # {param_name: bool tensor}
    FINAL_MODEL = "final_model.pt"    # state dict of the trained model
    CHECKPOINT = "checkpoint.pt"      # the resume point (engine.checkpoint)
    CHECKPOINT_PREV = "checkpoint.prev.pt"  # the one before: the fallback when checkpoint.pt is damaged
    DAMAGED = ".damaged"              # suffix of a damaged file moved aside (checkpoint.pt.damaged)
    HEARTBEAT = "heartbeat.json"      # a running run's position: Heartbeat
    COSTS = "costs.json"              # parameters and FLOPs per layer, dense and effective (CostRecord totals)
    MASK_INDICES = "mask_indices.json"  # the training-set rows of the mask data: mask_indices_record()


def mask_indices_record(indices: list[int], source: str, dataset: str) -> dict[str, Any]:
    """``mask_indices.json``: the mask data's training-set rows in the order scored, where they came from (the
    ``compressor.mask_indices`` file, or the seeded draw) and their SHA-256.  The file itself is accepted by
    ``training.compressor.mask_indices``, so another run can reuse exactly these rows."""
    digest = hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()
    return {"format": "pai-mask-indices", "dataset": dataset, "source": source, "count": len(indices),
            "sha256": digest, "indices": list(indices)}


Status = Literal["running", "completed", "failed", "interrupted"]
STATUSES: tuple[str, ...] = ("running", "completed", "failed", "interrupted")


@dataclass
class StatusRecord:
    """``status.json``: where a run stands and why."""

    status: str = "running"
    reason: Optional[str] = None
    traceback: Optional[str] = None
    problems: Optional[list[str]] = None
    config_file: Optional[str] = None
    started: Optional[str] = None
    finished: Optional[str] = None
    updated: Optional[str] = None
    attempts: int = 0
    resumed: bool = False
    seconds: Optional[float] = None
    log: Optional[str] = None                  # the launcher task's log file (Slurm stdout), when there is one
    history: Optional[list[dict[str, Any]]] = None  # earlier attempts that failed or were interrupted
    notes: Optional[list[str]] = None               # what the engine did about damaged files
    checkpoint_deleted: Optional[str] = None        # when general.keep deleted checkpoint.pt of the completed run

    @classmethod
    def from_json(cls, data: Any) -> StatusRecord | None:
        """The record of a ``status.json`` dict (unknown keys, and values of the wrong type, ignored); None
        for anything else."""
        if not isinstance(data, dict):
            return None
        kinds = {"attempts": int, "resumed": bool, "seconds": (int, float), "problems": list, "history": list,
                 "notes": list}
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)
                      if isinstance(data.get(f.name), kinds.get(f.name, str)) and not
                      (isinstance(data[f.name], bool) and f.name in ("attempts", "seconds"))})

    def retire_attempt(self) -> None:
        """Move a failed or interrupted attempt's reason and traceback into ``history`` (last 20 kept)."""
        if self.status in ("failed", "interrupted"):
            past = {"status": self.status, "attempt": self.attempts, "reason": self.reason,
                    "traceback": self.traceback, "problems": self.problems, "started": self.started,
                    "ended": self.updated}
            self.history = [*(self.history or []), {k: v for k, v in past.items() if v is not None}][-20:]
        self.reason = self.traceback = self.problems = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class PruningRecord:
    """How the mask of a run came about: times, cache use, diagnostics and :func:`compressors.mask_summary`."""

    warmup_seconds: float = 0.0
    scoring_seconds: float = 0.0
    score_cache: Optional[str] = None            # hit | miss | off (the last scoring)
    score_cache_key: Optional[str] = None
    score_cache_hits: int = 0
    score_cache_misses: int = 0
    criterion_diagnostics: dict[str, Any] = field(default_factory=dict)
    mask_samples: int = 0
    prunable_parameters: int = 0
    kept_parameters: int = 0
    achieved_sparsity: float = 0.0
    total_parameters: int = 0
    overall_sparsity: float = 0.0
    layer_density: dict[str, float] = field(default_factory=dict)
    layer_collapse: list[str] = field(default_factory=list)
    structures: Optional[dict[str, Any]] = None  # structured runs: compressors.StructureSet.record


@dataclass
class CostRecord:
    """What one forward pass of the run's network costs (:func:`compressors.costs.count_costs`): parameters
    and FLOPs (2 per multiply-add), dense and effective (unstructured masks: the kept weights; structured:
    the compact model).  ``results.json`` holds these totals; ``costs.json`` the per-layer table."""

    params_dense: int = 0
    params_effective: int = 0
    flops_dense: int = 0
    flops_effective: int = 0


@dataclass
class RunResults:
    """``results.json``: every final number of a run.  ``extra`` holds what one experiment adds (e.g.
    ``iterations`` of irp); it is written flat beside the other fields."""

    test: dict[str, float]                    # final model on the test set: loss, acc, precision, recall, f1
    best_val_test: dict[str, float]           # the best-validation model on the test set
    best_val_epoch: Optional[int]
    best_val_metric: Optional[float]
    validation_metric: str
    validation_on_test_set: bool
    epoch_seconds: list[float]
    pruning: PruningRecord
    extra: dict[str, Any] = field(default_factory=dict)
    costs: Optional[CostRecord] = None

    def to_json(self) -> dict[str, Any]:
        return {
            **{f"final_test_{k}": v for k, v in self.test.items()},
            **{f"best_val_test_{k}": v for k, v in self.best_val_test.items()},
            "best_val_epoch": self.best_val_epoch, "best_val_metric": self.best_val_metric,
            "validation_metric": self.validation_metric, "validation_on_test_set": self.validation_on_test_set,
            "epochs": len(self.epoch_seconds), "epoch_seconds": self.epoch_seconds,
            "train_seconds": sum(self.epoch_seconds),
            **dataclasses.asdict(self.pruning), **(dataclasses.asdict(self.costs) if self.costs else {}), **self.extra,
        }


@dataclass
class Heartbeat:
    """``heartbeat.json``: where a running run is, rewritten at every epoch and stage (``time`` is epoch
    seconds); ``main.py status`` reads it to show progress, the age of the last beat and an ETA."""

    phase: str                  # e.g. "train", "scoring"
    epoch: int                  # data epochs completed
    step: int                   # training steps taken
    total_epochs: int           # epochs the run trains in all
    epoch_seconds: float        # mean seconds per epoch so far (0 before the first)
    host: str
    pid: int
    time: float

    @classmethod
    def from_json(cls, data: Any) -> Heartbeat | None:
        try:
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
        except (TypeError, KeyError):
            return None


def is_completed(status: Any, results: Any) -> bool:
    """A run is completed when its status says so and its results could be read."""
    return isinstance(status, dict) and status.get("status") == "completed" and isinstance(results, dict)


# ------------------------------------------------------------------ validity: the one rule report and status share
UNIT_SUFFIXES = ("_acc", "_precision", "_recall", "_f1", "_sparsity", "_density")      # fractions: in [0, 1]
COUNT_SUFFIXES = ("_loss", "_seconds", "_parameters")                                  # never negative
COUNT_PREFIXES = ("params_", "flops_")
COUNT_FIELDS = ("epochs", "best_val_epoch", "score_cache_hits", "score_cache_misses", "mask_samples")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value_range(key: str, results: dict[str, Any]) -> str | None:
    """``"unit"`` ([0, 1]), ``"count"`` (>= 0) or None (no rule) for a ``results.json`` field."""
    if key == "best_val_metric":
        metric = str(results.get("validation_metric", ""))
        return "count" if metric.endswith("loss") else "unit" if metric.endswith(UNIT_SUFFIXES[:4]) or metric in (
            "acc", "precision", "recall", "f1") else None
    if key.endswith(UNIT_SUFFIXES) or key == "layer_density":
        return "unit"
    if key.endswith(COUNT_SUFFIXES) or key.startswith(COUNT_PREFIXES) or key in COUNT_FIELDS:
        return "count"
    return None


def _out_of_range(value: float, kind: str) -> str | None:
    if kind == "unit" and not 0 <= value <= 1:
        return "outside [0, 1]"
    if kind == "count" and value < 0:
        return "negative"
    return None


def results_problems(results: Any) -> list[str]:
    """What makes a ``results.json`` impossible, one line each (empty: the numbers can be used).  The rule
    ``main.py report`` and ``main.py status`` share: a number that is not finite; a fraction (``*_acc``,
    ``*_precision``, ``*_recall``, ``*_f1``, ``*_sparsity``, ``layer_density``) outside [0, 1]; a loss, a time
    (``*_seconds``, ``epoch_seconds``) or a count (parameters, FLOPs, epochs) below 0; a text or true/false where
    one of these numbers belongs.  A missing field or ``null`` is not a problem (older versions lack some)."""
    if not isinstance(results, dict):
        return [f"{Files.RESULTS} holds {type(results).__name__}, not an object"]
    out: list[str] = []
    infinite = [k for k, v in results.items() if isinstance(v, float) and not math.isfinite(v)]
    if infinite:
        out.append(f"{', '.join(infinite)} not finite ({results[infinite[0]]!r})")
    for key, value in results.items():
        kind = _value_range(key, results)
        if kind is None or value is None or key in infinite:
            continue
        if isinstance(value, (list, dict)):
            items = value.values() if isinstance(value, dict) else value
            for item in items:
                why = ("not a number" if not _is_number(item) else "not finite" if not math.isfinite(item)
                       else _out_of_range(item, kind))
                if why:
                    out.append(f"{key} holds {item!r}, {why}")
                    break
        elif not _is_number(value):
            out.append(f"{key} is {value!r}, not a number")
        elif why := _out_of_range(value, kind):
            out.append(f"{key} is {value!r}, {why}")
    return [f"{Files.RESULTS}: {p}" for p in out]


def config_problems(config: Any) -> list[str]:
    """What makes a resolved ``config.json`` unusable for a report (its row and column keys of the wrong type,
    a sparsity outside [0, 1)): a run with such a config is ``broken`` for report and status alike."""
    if not isinstance(config, dict):
        return [f"{Files.CONFIG} holds {type(config).__name__}, not an object"]
    checks = {("dataset", "class"): str, ("model", "class"): str, ("training", "compressor", "class"): str,
              ("training", "compressor", "sparsity"): (int, float), ("training", "compressor", "warmup"): int,
              ("general", "seed"): int}
    for keys, kind in checks.items():
        value: Any = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            return [f"{Files.CONFIG}: {'.'.join(keys)} is {value!r}, not {'a string' if kind is str else 'a number'}"]
    sparsity = config["training"]["compressor"]["sparsity"]
    if not (math.isfinite(sparsity) and 0 <= sparsity < 1):
        return [f"{Files.CONFIG}: training.compressor.sparsity is {sparsity!r}, outside [0, 1)"]
    return []


@dataclass
class RunState:
    """Where one run folder stands for ``report`` and ``status`` alike (:func:`read_state`): ``state`` is a
    status of ``status.json`` (running, completed, failed, interrupted), ``unknown`` (no status.json nor
    results.json yet) or ``broken`` (a file unreadable, or impossible numbers: ``reason`` says which)."""

    state: str
    reason: Optional[str]
    config: Optional[dict[str, Any]] = None
    status: Optional[dict[str, Any]] = None
    results: Optional[dict[str, Any]] = None


def read_record(folder: RunFolder, name: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(content, problem)`` of one JSON file of a run folder: (None, None) when it is absent."""
    if not folder.file(name).exists():
        return None, None
    try:
        data = folder.read(name)
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{name} is unreadable ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(data, dict):
        return None, f"{name} holds {type(data).__name__}, not an object"
    return data, None


def read_state(folder: RunFolder) -> RunState:
    """The state of a run folder, from its config.json, status.json and results.json; never an exception."""
    try:
        (config, p1), (status, p2), (results, p3) = (read_record(folder, f)
                                                     for f in (Files.CONFIG, Files.STATUS, Files.RESULTS))
        problems = [p for p in (p1, p2, p3) if p]
        state = (status or {}).get("status") or ("completed" if results is not None else "unknown")
        reason = (status or {}).get("reason")
        if status is None and results is None:
            reason = "no status.json: the run is just starting, or was never started by the runner"
        if state == "completed" and results is None:
            state, reason = "broken", "status says completed but results.json is missing or unreadable"
        if config is None:
            reason = reason or "config.json is missing or unreadable"
        problems += (config_problems(config) if config else []) + (results_problems(results) if results else [])
        if problems or not isinstance(state, str):
            state, reason = "broken", "; ".join(problems) or f"status.json: status is {state!r}"
        return RunState(state, reason if isinstance(reason, str) or reason is None else str(reason),
                        config, status, results)
    except Exception as exc:  # noqa: BLE001 - one garbage folder never stops a report or a status
        return RunState("broken", f"cannot be read ({type(exc).__name__}: {exc})")


class RunFolder:
    """Reads and writes the files of one run folder (every write atomic)."""

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        # shared folder for results reusable across runs of one results root (cached scores)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    @classmethod
    def under(cls, root: str | Path, relative: str | Path) -> RunFolder:
        """The run folder ``root/relative`` with the root's shared score cache."""
        return cls(Path(root) / relative, Path(root) / SCORE_CACHE)

    def file(self, name: str) -> Path:
        return self.path / name

    # json records ------------------------------------------------------------
    def read(self, name: str) -> Any:
        return read_json(self.file(name))

    def read_or_none(self, name: str) -> Any:
        """The JSON of ``name``, or None when it is missing or unreadable."""
        try:
            return self.read(name)
        except (OSError, ValueError, RecursionError):
            return None

    def write(self, name: str, obj: Any) -> None:
        write_json(self.file(name), obj)

    def status(self) -> dict[str, Any] | None:
        data = self.read_or_none(Files.STATUS)
        return data if isinstance(data, dict) else None

    def set_status(self, status: Status, **fields: Any) -> None:
        """Update ``status.json`` (a running run moves an earlier failure into ``history``)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        record = StatusRecord.from_json(self.status() or {}) or StatusRecord()
        if status == "running":
            record.retire_attempt()
        record = dataclasses.replace(record, **fields, status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.write(Files.STATUS, record.to_json())

    def note(self, text: str) -> None:
        """Add ``text`` to ``status.json``'s ``notes`` (e.g. a damaged checkpoint and what was done instead)."""
        record = StatusRecord.from_json(self.status() or {}) or StatusRecord()
        record.notes = [*(record.notes or []), f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}"]
        self.write(Files.STATUS, record.to_json())

    def is_completed(self) -> bool:
        return is_completed(self.status(), self.read_or_none(Files.RESULTS))

    def write_rows(self, name: str, csv_name: str, rows: list[dict[str, Any]]) -> None:
        """A list of records as JSON and as CSV (history, iterations)."""
        self.write(name, rows)
        write_text(self.file(csv_name), csv_text(rows))

    # tensors -----------------------------------------------------------------
    def save_mask(self, masks: dict[str, Any]) -> None:
        save_torch(self.file(Files.MASK), {n: m.bool().cpu() for n, m in masks.items()})

    def load_mask(self) -> dict[str, Any]:
        return load_torch(self.file(Files.MASK))

    def save_torch(self, name: str, obj: Any) -> None:
        save_torch(self.file(name), obj)


def invalid_dir(root: str | Path, config_file: str | Path) -> Path:
    """Where the failure of a config too broken to have a run folder is recorded."""
    path = Path(config_file)
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return Path(root) / INVALID / f"{path.stem}-{digest}"


def find_run_dirs(root: str | Path) -> list[Path]:
    """Run folders below ``root``: folders holding ``status.json`` or ``config.json`` (not descending into
    them), outside the root's ``invalid/``, ``batches/`` and ``score_cache/``."""
    root = Path(root)
    found: list[Path] = []
    for here, dirs, files in os.walk(root):
        path = Path(here)
        if path == root:
            dirs[:] = [d for d in dirs if d not in NOT_RUN_DIRS]
        if path != root and (Files.STATUS in files or Files.CONFIG in files):
            found.append(path)
            dirs[:] = []
            continue
        dirs.sort()
    return sorted(found)


def batch_record_path(root: str | Path) -> Path:
    """A new file for one batch summary, named by the time to the microsecond (sorted names are in time
    order) and claimed at once (created exclusively), so two batches never share a file, even two
    processes ending in the same microsecond."""
    folder = Path(root) / BATCHES
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    stem = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now % 1 * 1e6):06d}"
    for n in itertools.count():
        path = folder / (stem + (f"_{n}" if n else "") + ".json")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")
