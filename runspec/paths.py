"""Dotted paths into a config file, as ``--set PATH=VALUE`` takes them (``main.py sweep`` and ``main.py run``).

Paths are dotted JSON paths (``training.compressor.sparsity``); the short forms in :data:`SHORTCUTS` and
:data:`ALIASES` save typing (``compressor.sparsity``, ``sparsity``).  Values are parsed as JSON where
possible (numbers, ``true``/``false``, ``null``, lists, objects) and kept as strings otherwise.
"""

from __future__ import annotations

import copy
import json
from typing import Any

# short prefix -> full prefix (a path that starts with "<short>." is rewritten)
SHORTCUTS: dict[str, str] = {
    "compressor": "training.compressor",
    "optimizer": "training.optimizer",
    "loss": "training.criterion",
}
# whole-path aliases
ALIASES: dict[str, str] = {
    "seed": "general.seed",
    "epochs": "training.num_steps",
    "sparsity": "training.compressor.sparsity",
    "criterion": "training.compressor.class",
}
COMPRESSOR_PREFIX = "training.compressor."


def path_help() -> str:
    """How ``--set PATH=...`` paths may be written, from :data:`SHORTCUTS` and :data:`ALIASES` (the help of
    ``main.py sweep``)."""
    shortcuts = ", ".join(f"{short}.X = {full}.X" for short, full in SHORTCUTS.items())
    aliases = ", ".join(f"{alias} = {full}" for alias, full in ALIASES.items())
    return (f"PATH is a dotted path into the config file (training.compressor.sparsity); short forms: {shortcuts}; "
            f"aliases: {aliases}.")



def expand_path(path: str) -> str:
    """Full dotted path of a possibly abbreviated one (see :data:`SHORTCUTS` and :data:`ALIASES`)."""
    path = path.strip()
    if path in ALIASES:
        return ALIASES[path]
    head, _, rest = path.partition(".")
    if head in SHORTCUTS and rest:
        return f"{SHORTCUTS[head]}.{rest}"
    return path


def parse_value(text: str) -> Any:
    """JSON value where the text is valid JSON (``0.9``, ``true``, ``[80,120]``), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``path="a.b.c"``, creating missing objects on the way."""
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = copy.deepcopy(value)


def get_path(data: dict[str, Any], path: str, default: Any = None) -> Any:
    """``data[a][b][c]`` for ``path="a.b.c"``, or ``default`` when any step is missing."""
    node: Any = data
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


class OverrideError(ValueError):
    """A malformed ``run --set`` argument."""


def parse_override(text: str) -> tuple[str, Any]:
    """``"compressor.sparsity=0.95"`` -> ``("training.compressor.sparsity", 0.95)``: one field set to one
    value (JSON where it parses, else the string), for ``main.py run --set``."""
    path, sep, value = text.partition("=")
    if not sep or not path.strip():
        raise OverrideError(f"--set {text!r}: expected PATH=VALUE, e.g. training.compressor.sparsity=0.95")
    if not value.strip():
        raise OverrideError(f"--set {text!r}: empty value")
    return expand_path(path), parse_value(value.strip())


class IfUnset:
    """An override value that applies only where the config does not set the field itself (the official
    command line's ``general.compat: official``)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IfUnset) and other.value == self.value

    def __repr__(self) -> str:
        return f"IfUnset({self.value!r})"

    def to_json(self) -> dict[str, Any]:
        return {IF_UNSET: self.value}


IF_UNSET = "__if_unset__"


def override_from_json(value: Any) -> Any:
    """The inverse of :meth:`IfUnset.to_json` (overrides travel to worker processes as JSON)."""
    return IfUnset(value[IF_UNSET]) if isinstance(value, dict) and set(value) == {IF_UNSET} else value


def override_to_json(value: Any) -> Any:
    return value.to_json() if isinstance(value, IfUnset) else value


_MISSING = object()


def apply_overrides(raw: Any, overrides: list[tuple[str, Any]]) -> Any:
    """A copy of the config ``raw`` (a file's JSON) with each ``(path, value)`` set (an :class:`IfUnset`
    value only where ``raw`` does not set that path); ``raw`` itself is not changed.  A non-object ``raw``
    is returned as it is (its own error is reported when it is checked)."""
    if not overrides or not isinstance(raw, dict):
        return raw
    out = copy.deepcopy(raw)
    for path, value in overrides:
        if isinstance(value, IfUnset):
            if get_path(out, path, _MISSING) is _MISSING:
                set_path(out, path, value.value)
            continue
        set_path(out, path, value)
    return out
