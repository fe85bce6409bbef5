"""The run folder: where a run's resolved config, status, metrics, mask and checkpoint live.

Layout: ``<root>/<experiment>/<dataset>/<model>/<compressor>/<sparsity>/seed_<n>-<hash>/`` where
``hash`` is the first 10 hex digits of the SHA-256 of the resolved config minus the fields that do not
change results (name, description, output folder, GPU index, worker count).  Re-running an identical
experiment finds the same folder; a different experiment can never land in it.

Files: ``config.json`` (resolved config), ``status.json`` (running / completed / failed / interrupted,
reason, traceback, times), ``environment.json``, ``history.json`` / ``history.csv`` (per epoch),
``results.json`` (every final number), ``mask.pt``, ``checkpoint.pt`` (last completed epoch).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from utils.io import read_json, write_json

# fields that never change what a run computes
_HASH_EXCLUDED = (
    ("general", "id"), ("general", "description"), ("general", "output_dir"), ("general", "gpu"),
    ("dataset", "num_workers"), ("dataset", "root"), ("dataset", "download"),
)

STATUSES = ("running", "completed", "failed", "interrupted")


def config_hash(resolved: dict[str, Any]) -> str:
    data = copy.deepcopy(resolved)
    for section, key in _HASH_EXCLUDED:
        data.get(section, {}).pop(key, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _slug(text: Any) -> str:
    out = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(text))
    return out.strip("-") or "x"


def run_dir(root: str | Path, resolved: dict[str, Any]) -> Path:
    """The run folder of a resolved config (see the module docstring)."""
    comp = resolved["training"]["compressor"]
    sparsity = "dense" if comp["class"].lower() in ("none", "dense") else f"{comp['sparsity']:g}"
    parts = [
        resolved["general"]["experiment"], resolved["dataset"]["class"], resolved["model"]["class"],
        comp["class"] + (f"-{comp['mask']}" if comp["mask"] != "global" else ""), sparsity,
        f"seed_{resolved['general']['seed']}-{config_hash(resolved)}",
    ]
    return Path(root).joinpath(*(_slug(p.lower() if i < 4 else p) for i, p in enumerate(parts)))


class RunStore:
    """Reads and writes the files of one run folder (atomically)."""

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        # shared folder for results reusable across runs of one results root (e.g. cached scores)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def file(self, name: str) -> Path:
        return self.path / name

    # status -----------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        try:
            return read_json(self.file("status.json"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def set_status(self, status: str, **fields: Any) -> None:
        assert status in STATUSES, status
        current = self.status() or {}
        current.update(fields)
        current["status"] = status
        current["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if status == "running":
            for stale in ("reason", "traceback", "problems"):
                current.pop(stale, None)
        write_json(self.file("status.json"), current)

    def is_completed(self) -> bool:
        st = self.status()
        return bool(st and st.get("status") == "completed" and self.file("results.json").exists())

    # json files -------------------------------------------------------------
    def write(self, name: str, obj: Any) -> None:
        write_json(self.file(name), obj)

    def read(self, name: str) -> Any:
        return read_json(self.file(name))


class RunBusy(RuntimeError):
    """The run folder is claimed by another live process."""


def _lock_holder(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _holder_is_gone(holder: dict[str, Any] | None, path: Path) -> bool:
    """A lock is stale when its process is known to be dead: same host and no such pid.  An unreadable
    lock (a writer that died between creating and writing it) is stale after a minute."""
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > 60
        except OSError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell from here: the user removes it (the message says how)
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


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
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if attempt == 0 and _holder_is_gone(holder, path):
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
