"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A process killed at any moment leaves either the complete previous file or the complete new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch


def _atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None  # NaN is not JSON
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    data = json.dumps(_jsonable(obj), indent=2, sort_keys=False, default=str).encode("utf-8") + b"\n"
    _atomic(path, lambda fh: fh.write(data))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_bytes(path: str | Path, payload: bytes) -> None:
    _atomic(path, lambda fh: fh.write(payload))


def write_text(path: str | Path, text: str) -> None:
    _atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text: one column per key seen (in first-seen order), nested dicts and lists left out
    (they live in the JSON twin of the file), empty cells for missing or None values."""
    keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (dict, list))))
    lines = [",".join(keys)] + [",".join("" if r.get(k) is None else str(r.get(k)) for k in keys) for r in rows]
    return "\n".join(lines) + "\n"


def save_torch(path: str | Path, obj: Any) -> None:
    _atomic(path, lambda fh: torch.save(obj, fh))


def load_torch(path: str | Path, map_location: Any = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)
