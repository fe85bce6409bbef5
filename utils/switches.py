"""Switches whose ``None`` means "as the compatibility mode says".

A dataclass (a config section, a criterion's ``Options``) declares its switchable fields in a class
attribute ``COMPAT = {field: {mode: value, ...}}``; each such field defaults to ``None``.  :func:`resolve`
replaces every ``None`` switch by its value for a mode (in place, nested dataclasses included), so code
downstream only ever sees concrete values; :func:`at_reference` turns every switch that holds its
reference-mode value back into ``None``, so an identity built from non-default values does not change when
a configuration spells out the reference behaviour (or when a switch is added).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

REFERENCE_MODE = "paper"


def table(obj: Any) -> dict[str, dict[str, Any]]:
    """The ``COMPAT`` table of a dataclass instance or class (empty when it declares none)."""
    return dict(getattr(obj, "COMPAT", {}) or {})


def _children(obj: Any) -> list[Any]:
    return [v for f in dataclasses.fields(obj)
            if dataclasses.is_dataclass(v := getattr(obj, f.name)) and not isinstance(v, type)]


def resolve(obj: Any, mode: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """Fill every ``None`` switch of ``obj`` (and of its nested dataclasses) with its value in ``mode``;
    ``overrides`` (field -> value) replace the table's values for ``obj`` itself.  Returns ``obj``."""
    if obj is None or not dataclasses.is_dataclass(obj):
        return obj
    for name, values in table(obj).items():
        if getattr(obj, name) is None:
            if mode not in values:
                raise ValueError(f"{type(obj).__name__}.{name}: no value for mode {mode!r}; known: {sorted(values)}")
            value = values[mode]
            if overrides and mode != REFERENCE_MODE and name in overrides:
                value = overrides[name]
            setattr(obj, name, value)
    for child in _children(obj):
        resolve(child, mode)
    return obj


def at_reference(obj: Any) -> Any:
    """A copy of ``obj`` with every switch that equals its reference-mode value set back to ``None``."""
    if obj is None or not dataclasses.is_dataclass(obj):
        return obj
    out = dataclasses.replace(obj)
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            setattr(out, f.name, at_reference(value))
    for name, values in table(out).items():
        if REFERENCE_MODE in values and getattr(out, name) == values[REFERENCE_MODE]:
            setattr(out, name, None)
    return out
