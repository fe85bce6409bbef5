"""``--launcher local``: the runs of a batch on a pool of worker processes of this machine.

Each run is one worker process (``python -m launch.worker``, in its own session, its output in
``<results>/launch/<time>/<n>-<config>.log``); at most ``workers`` run at once, and slot ``i`` sees only
GPU ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``).  A run in a worker behaves exactly as in a plain
``run`` (:func:`launch.runner.run_config`: locks, skipping, resuming, failure records).

Stopping is clean: SIGTERM or Ctrl-C of the launcher sends one SIGINT to every running worker, which marks
its run ``interrupted`` (rerun to resume) and exits; a worker still alive after ``grace_s`` seconds (or at
a second Ctrl-C) is killed and its run marked ``interrupted`` by the launcher.  Then the launcher prints
the summary and writes the batch record as always; runs not started yet are counted as such.  A worker that
dies by itself (killed from outside, out of memory) is reported as ``failed`` with the signal or exit code;
its run folder keeps its own state (a run it had completed stays completed; one it was running becomes
``interrupted``, resumable).  If the launcher itself is killed, the kernel sends every worker SIGTERM
(Linux), which interrupts it the same way.

Worker processes are this module's own rather than submitit's local executor, whose shell wrapper and
controller ignore SIGTERM and kill a task one second after interrupting it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from launch.runner import Overrides, RunOutcome, fill_results, outcome_of, record_batch
from runspec import RunSpec
from runspec.folder import RunFolder, read_state, results_root
from runspec.paths import override_to_json

ROOT = Path(__file__).resolve().parent.parent  # the project, importable in every worker
STOP_GRACE_S = 60.0
POLL_S = 0.2


@dataclass
class _Worker:
    path: Path
    number: int
    slot: int
    process: subprocess.Popen
    outcome_file: Path
    log_file: Path
    log_handle: IO[bytes]
    started: float


class _Stop(KeyboardInterrupt):
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start(path: Path, number: int, slot: int, folder: Path, results: str | Path | None,
           gpus: list[int], overrides: Overrides) -> _Worker:
    stem = f"{number:04d}-{path.stem}"
    outcome_file, log_file = folder / f"{stem}.outcome.json", folder / f"{stem}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PAI_TASK_LOG"] = str(log_file)  # launch.runner.TASK_LOG: recorded in the run's status.json
    env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)]) if gpus else ""
    if gpus:
        env["PAI_CUDA_INDEX"] = "0"  # the one visible device
    command = [sys.executable, "-m", "launch.worker", str(outcome_file), str(path)]
    if results is not None:
        command += ["--results", str(results)]
    if overrides:
        command += ["--overrides", json.dumps([[path, override_to_json(value)] for path, value in overrides])]
    handle = open(log_file, "ab")  # noqa: SIM115 - closed when the worker is collected
    process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True,  # a terminal's Ctrl-C reaches the launcher only
                               preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    return _Worker(path, number, slot, process, outcome_file, log_file, handle, time.perf_counter())


def _folder_of(path: Path, results: str | Path | None,
               overrides: Overrides = ()) -> tuple[RunFolder | None, RunOutcome | None]:
    """The run folder of a config and an outcome with what the config says (None, None: unreadable)."""
    try:
        spec = RunSpec.load(path, overrides=overrides)
    except Exception:  # noqa: BLE001 - the worker recorded why
        return None, None
    folder = spec.folder(results_root(results, spec.config.general.output_dir))
    return folder, outcome_of(path, spec, folder)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _collect(worker: _Worker, results: str | Path | None, *, stopped: bool, overrides: Overrides = ()) -> RunOutcome:
    """The outcome of a finished worker: the one it wrote, or (it died) one read from its run folder."""
    worker.log_handle.close()
    seconds = time.perf_counter() - worker.started
    try:
        outcome = RunOutcome(**json.loads(worker.outcome_file.read_text()))
    except (OSError, ValueError, TypeError):
        outcome = None
    folder, known = _folder_of(worker.path, results, overrides)
    if outcome is not None:
        if known is not None and outcome.run_dir is None:  # interrupted before the run began: what it was
            outcome.run_dir, outcome.criterion, outcome.sparsity = known.run_dir, known.criterion, known.sparsity
            outcome.seed, outcome.id = known.seed, known.id
        outcome.seconds = outcome.seconds or seconds
        return outcome
    why = _exit_text(worker.process.returncode)
    outcome = known or RunOutcome(str(worker.path), "failed")
    outcome.status = "interrupted" if stopped else "failed"
    outcome.seconds = seconds
    outcome.reason = ("stopped: worker " if stopped else "worker process died: ") + f"{why} (log: {worker.log_file})"
    if folder is None:
        return outcome
    state = read_state(folder)
    if state.state == "completed":  # it finished the run before it died: the run's own state stands
        outcome.status, outcome.reason = "completed", f"its worker process died after completing the run ({why})"
        fill_results(outcome, state.results)
    elif state.state == "running":  # its process is gone: resumable from the last checkpoint
        note = f"its worker process was stopped ({why})" if stopped else f"its worker process died ({why})"
        try:
            folder.set_status("interrupted", reason=f"{note}; rerun to resume", seconds=seconds)
        except OSError:
            pass
        outcome.reason = (outcome.reason or "") + "; the run is marked interrupted: rerun to resume"
    return outcome


class _Signals:
    """SIGINT / SIGTERM while the launcher runs: the first raises :class:`_Stop` (the launcher stops its
    workers), each later one only asks to hurry (kill the workers now), so a second Ctrl-C or a SIGTERM
    that arrives twice never cuts the stopping short."""

    def __init__(self) -> None:
        self.stopping = False
        self.hurry = False

    def __call__(self, signum, frame):  # noqa: ANN001
        if self.stopping:
            self.hurry = True
            return
        self.stopping = True
        raise _Stop(f"signal {signum}")


def _stop(running: dict[int, _Worker], grace_s: float, signals: _Signals, log: Callable[[str], None]) -> None:
    """One SIGINT to every running worker; SIGKILL to those still alive after ``grace_s`` or at a second
    Ctrl-C / SIGTERM."""
    for w in running.values():
        try:
            os.killpg(w.process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while any(w.process.poll() is None for w in running.values()) and not signals.hurry \
            and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for w in running.values():
        if w.process.poll() is None:
            log(f"  {w.path}: worker did not stop in time; killed")
            try:
                os.killpg(w.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.process.wait()


def visible_gpus(gpus: list[int] | None) -> list[int]:
    """The GPUs the workers get: ``gpus`` checked against what CUDA sees (ValueError naming the valid
    indices), or every visible GPU when None (none: the CPU)."""
    import torch

    visible = torch.cuda.device_count()
    if gpus is None:
        return list(range(visible))
    listed = ",".join(map(str, gpus))
    if gpus and not visible:
        raise ValueError(f"--gpus {listed}: CUDA sees no GPU here; leave --gpus out to run on the CPU")
    if bad := [g for g in gpus if not 0 <= g < visible]:
        raise ValueError(f"--gpus {listed}: GPU {bad[0]} is not visible here (valid: 0..{visible - 1})")
    return list(gpus)


def launch_local(todo: list[Path], results: str | Path | None, *, workers: int, gpus: list[int] | None,
                 log: Callable[[str], None] = print, grace_s: float = STOP_GRACE_S,
                 earlier: list[RunOutcome] | None = None, overrides: Overrides = ()) -> list[RunOutcome]:
    """Run ``todo`` on at most ``workers`` worker processes (default GPUs: every visible one in turn, or the
    CPU) and wait for them; returns the outcome of every run started (``earlier`` first, e.g. the skipped
    completed runs) and writes the batch record.  SIGTERM / Ctrl-C stops cleanly (module docstring)."""
    gpus = visible_gpus(gpus)
    root = results_root(results)
    folder = root / "launch" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [Path(p).absolute() for p in todo]
    slots = max(min(workers, len(paths)), 1)
    log(f"{len(paths)} runs on {slots} local workers" + (f" (GPUs {gpus})" if gpus else " (CPU)")
        + f"; logs in {folder}")
    outcomes: dict[int, RunOutcome] = {}
    running: dict[int, _Worker] = {}
    pending = list(enumerate(paths, 1))
    signals = _Signals()
    previous = {s: signal.signal(s, signals) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            while pending or running:
                for slot in range(slots):
                    if slot not in running and pending:
                        number, path = pending.pop(0)
                        running[slot] = _start(path, number, slot, folder, results, gpus, overrides)
                        where = f" on GPU {gpus[slot % len(gpus)]}" if gpus else ""
                        log(f"({number}/{len(paths)}) started {path}{where}")
                for slot, w in list(running.items()):
                    if w.process.poll() is not None:
                        del running[slot]
                        o = outcomes[w.number] = _collect(w, results, stopped=False, overrides=overrides)
                        log(f"({w.number}/{len(paths)}) {o.status}: {w.path}" + (f": {o.reason}" if o.reason else ""))
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            log(f"\nstopping: {len(running)} running worker(s) interrupted (up to {grace_s:g} s to record their "
                f"runs; Ctrl-C again to kill them now), {len(pending)} run(s) not started")
            _stop(running, grace_s, signals, log)
            for w in running.values():
                outcomes[w.number] = _collect(w, results, stopped=True, overrides=overrides)
            running.clear()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for w in running.values():  # only on an unexpected error: never leave a worker behind
            w.process.kill()
    done = list(earlier or []) + [outcomes[n] for n in sorted(outcomes)]
    record_batch(done, results, log)
    return done


__all__ = ["launch_local", "STOP_GRACE_S"]
