"""File-name-safe text."""

from __future__ import annotations

from typing import Any


def slug(value: Any, keep: str = "-_.") -> str:
    """``value`` as a file-name part: characters other than letters, digits and ``keep`` become ``-``,
    runs of ``-`` are folded and stripped from the ends; ``"x"`` if nothing is left."""
    text = str(value)
    out = "".join(ch if ch.isalnum() or ch in keep else "-" for ch in text)
    return "-".join(p for p in out.split("-") if p) or "x"
