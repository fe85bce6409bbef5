"""Progress of long loops, on a terminal and in a log file alike.

On a terminal :func:`progress` is a tqdm bar.  Elsewhere (stdout redirected to a file, a cluster job)
tqdm shows nothing, so it prints one plain line at a steady interval instead::

    epoch 3/160: 120/391 batches (31%), 1,234 img/s, loss 1.532, ETA 0:03:21

The interval is ``PAI_PROGRESS_SECONDS`` (default 30 s; 0 turns the lines off).
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator

from tqdm.auto import tqdm

ENV_VAR = "PAI_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def interval() -> float:
    """Seconds between progress lines off a terminal (``$PAI_PROGRESS_SECONDS``, default 30)."""
    try:
        return max(float(os.environ.get(ENV_VAR, DEFAULT_SECONDS)), 0.0)
    except ValueError:
        return DEFAULT_SECONDS


def on_terminal() -> bool:
    return sys.stderr.isatty()


def eta_text(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def plural(unit: str, n: int) -> str:
    """``unit`` for a count ``n``: ``1 batch``, ``2 batches``, ``3 chunks``."""
    if n == 1:
        return unit
    return unit + ("es" if unit.endswith(("s", "x", "z", "ch", "sh")) else "s")


class LineProgress:
    """Iterates ``iterable`` and prints a progress line every ``every`` seconds (tqdm's interface subset:
    iteration, ``set_postfix``, ``close``)."""

    def __init__(self, iterable: Iterable, *, desc: str, total: int | None, unit: str, every: float,
                 write: Callable[[str], None]) -> None:
        self.iterable, self.desc, self.unit, self.every, self.write = iterable, desc, unit, every, write
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix: dict[str, Any] = {}
        self.done = 0

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        pass

    def line(self, elapsed: float) -> str:
        rate = self.done / elapsed if elapsed > 0 else 0.0
        units = plural(self.unit, self.total if self.total else self.done)
        count = f"{self.done}/{self.total} {units} ({100 * self.done / self.total:.0f}%)" if self.total \
            else f"{self.done} {units}"
        parts = [f"{self.desc}: {count}", f"{rate:,.1f} {self.unit}/s"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        if self.total and rate > 0:
            parts.append(f"ETA {eta_text((self.total - self.done) / rate)}")
        return ", ".join(parts)

    def __iter__(self) -> Iterator[Any]:
        start = last = time.perf_counter()
        for item in self.iterable:
            yield item
            self.done += 1
            now = time.perf_counter()
            if self.every > 0 and now - last >= self.every:
                last = now
                self.write(self.line(now - start))


def progress(iterable: Iterable, *, desc: str, total: int | None = None, unit: str = "it",
             write: Callable[[str], None] | None = None) -> Any:
    """A tqdm bar on a terminal, else a :class:`LineProgress` printing through ``write`` (default: print,
    flushed) every :func:`interval` seconds."""
    if on_terminal():
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, mininterval=1.0)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, every=interval(),
                        write=write or (lambda text: print(text, flush=True)))
