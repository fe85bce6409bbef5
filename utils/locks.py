"""Claiming a folder for one process: ``<folder>.lock`` holds the holder's pid, host and start time."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator


class RunBusy(RuntimeError):
    """The folder is claimed by another live process."""


def lock_holder(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def holder_is_gone(holder: dict[str, Any] | None, path: Path) -> bool:
    """A lock is stale when its process is known to be dead: same host and no such pid.  An unreadable
    lock (a writer that died between creating and writing it) is stale after a minute."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > 60
        except OSError:
            return True
    job = scheduler_job()
    if job is not None and holder.get("job") == job:
        return True  # this very scheduler job, requeued (after a preemption or a time-out)
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell from here: the user removes it (the message says how)
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


def scheduler_job() -> str | None:
    """The Slurm job (array task) this process belongs to, if any: it keeps its id when requeued."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job is None:
        return None
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if task is not None else job


def lock_path(folder: str | Path) -> Path:
    """``<folder>.lock``: a sibling of the run folder, so a rerun that deletes the folder keeps it."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".lock")


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Claim ``folder`` for this process: :func:`lock_path` is created exclusively with this pid, host
    and start time, and removed on exit, Ctrl-C and SIGTERM included.  A lock left by a dead process on
    this host is taken over; a live one raises :class:`RunBusy` naming its holder and the file."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
          "job": scheduler_job()}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(path)
            if attempt == 0 and holder_is_gone(holder, path):
                path.unlink(missing_ok=True)
                continue
            who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
                   if holder else "an unknown process")
            raise RunBusy(f"running in another process ({who}); if that process is gone, delete {path}") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
