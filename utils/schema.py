"""Parse plain JSON dicts into typed dataclasses, collecting every problem instead of stopping at one.

Every configurable thing in the framework (the experiment config, a criterion's options, a dataset's
options) is a dataclass whose fields carry their help text and range in ``metadata``; this module is
the one place that turns JSON into those dataclasses and back.  A problem names the JSON path and what
would be valid, and unknown keys get a "did you mean" suggestion.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

from utils.registry import did_you_mean

_MISSING = dataclasses.MISSING
# Integers outside int64 cannot reach torch, NumPy or a file format intact: no field accepts them.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (file, JSON path) and what is wrong / valid."""

    path: str
    message: str
    file: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.path or '<root>'}: {self.message}"


@dataclass
class NoOptions:
    """The options dataclass of things that take no options."""


class ConfigError(ValueError):
    """Raised with the full list of problems found in one config (or one options dict)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))



def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    key: str | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    factory: Any = _MISSING,
    identity: bool = True,
) -> Any:
    """A dataclass field with help text, an optional JSON key (e.g. ``class``) and an allowed range.

    ``identity=False`` marks a field that never changes what is computed (a name, an output folder, a
    worker count): :func:`nondefault` leaves it out, so it is not part of a run's identity.
    """
    meta = {
        "help": help,
        "identity": identity,
        "key": key,
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "max_exclusive": max_exclusive,
    }
    if factory is not _MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def json_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"a list of {_describe(inner)}"
    if origin is dict:
        return "an object"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


class _Invalid(Exception):
    pass


def _convert(value: Any, tp: Any, path: str, problems: list[Problem]) -> Any:
    """Convert ``value`` to type ``tp`` or record a problem and raise _Invalid."""
    origin = get_origin(tp)
    if tp is Any:
        return _finite(value, path, problems)
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path, problems)
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, str):
            for c in choices:
                if isinstance(c, str) and c.lower() == value.lower():
                    return c
        elif value in choices:
            return value
        hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        problems.append(Problem(path, f"invalid value {value!r}{hint}; valid: {', '.join(map(repr, choices))}"))
        raise _Invalid
    if origin is Union or type(tp).__name__ == "UnionType":
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        scratch: list[Problem] = []
        for a in non_none:
            try:
                return _convert(value, a, path, scratch)
            except _Invalid:
                continue
        # a value of the right kind that is wrong (not finite, out of range) says so; else: which kinds
        specific = [p for p in scratch if not p.message.startswith("expected ")]
        problems.append(specific[0] if specific else Problem(path, f"expected {_describe(tp)}, got {value!r}"))
        raise _Invalid
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            problems.append(Problem(path, f"expected {_describe(tp)}, got {value!r}"))
            raise _Invalid
        out, bad = [], False
        for i, item in enumerate(value):
            try:
                out.append(_convert(item, inner, _join(path, i), problems))
            except _Invalid:
                bad = True
        if bad:
            raise _Invalid
        return out
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(Problem(path, f"expected an object, got {value!r}"))
            raise _Invalid
        return _finite(dict(value), path, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"  # the official configs sometimes quote booleans
        problems.append(Problem(path, f"expected true/false, got {value!r}"))
        raise _Invalid
    if tp is int:
        if isinstance(value, float) and value.is_integer():  # 1.0: a number, not an integer as written
            problems.append(Problem(path, f"expected an integer, got {value!r}; write it without a decimal "
                                          f"point: {int(value)}"))
            raise _Invalid
        if isinstance(value, int) and not isinstance(value, bool):
            if INT_MIN <= value <= INT_MAX:
                return value
            problems.append(Problem(path, f"integer {value} is out of range; valid: [-2**63, 2**63 - 1]"))
            raise _Invalid
        problems.append(Problem(path, f"expected an integer, got {value!r}"))
        raise _Invalid
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(float(value), path, problems)
        problems.append(Problem(path, f"expected a number, got {value!r}"))
        raise _Invalid
    if tp is str:
        if isinstance(value, str):
            return value
        problems.append(Problem(path, f"expected a string, got {value!r}"))
        raise _Invalid
    return value


MAX_DEPTH = 64  # nesting levels of a free-form value (options): deeper ones are refused, not recursed into


def _finite(value: Any, path: str, problems: list[Problem]) -> Any:
    """``value`` when no number in it (nested lists and objects included) is NaN or infinite; else a
    problem naming the first such entry.  Python's json module reads ``NaN`` and ``Infinity``, which no
    setting means, so every field and option refuses them (one rule here, not a range per field)."""
    stack = [(path, value, 0)]
    while stack:  # iterative, and bounded: a deeply nested value cannot exhaust the recursion limit later
        where, item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            problems.append(Problem(where, f"{item!r} is not a finite number; valid: a finite number"))
            raise _Invalid
        if isinstance(item, (dict, list)) and depth >= MAX_DEPTH:
            problems.append(Problem(where, f"nested more than {MAX_DEPTH} levels deep"))
            raise _Invalid
        if isinstance(item, dict):
            stack.extend((_join(where, str(k)), v, depth + 1) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((_join(where, i), v, depth + 1) for i, v in reversed(list(enumerate(item))))
    return value


def _check_range(value: Any, f: dataclasses.Field, path: str, problems: list[Problem]) -> bool:
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        lo_bad = lo is not None and (v <= lo if f.metadata.get("min_exclusive") else v < lo)
        hi_bad = hi is not None and (v >= hi if f.metadata.get("max_exclusive") else v > hi)
        if lo_bad or hi_bad:
            left = "(" if f.metadata.get("min_exclusive") else "["
            right = ")" if f.metadata.get("max_exclusive") else "]"
            rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            problems.append(Problem(path, f"value {v!r} is out of range; valid: {rng}"))
            return False
    return True


def parse(cls: type, data: Any, path: str, problems: list[Problem]) -> Any:
    """Build ``cls`` from ``data``; append every problem to ``problems``; bad fields keep their default.

    After the fields are set, ``cls.check(self, path, problems)`` (if defined) runs cross-field checks.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(Problem(path, f"expected an object, got {data!r}"))
        raise _Invalid
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    by_key = {json_key(f): f for f in fields}
    for key in data:
        if key not in by_key:
            problems.append(
                Problem(_join(path, key), f"unknown key{did_you_mean(key, by_key)}; valid keys: {', '.join(by_key)}")
            )
    kwargs: dict[str, Any] = {}
    required_missing = False
    for key, f in by_key.items():
        fpath = _join(path, key)
        if key in data:
            try:
                value = _convert(data[key], hints[f.name], fpath, problems)
                if _check_range(value, f, fpath, problems):
                    kwargs[f.name] = value
                    continue
            except _Invalid:
                pass
        if f.default is _MISSING and f.default_factory is _MISSING:  # type: ignore[misc]
            if key not in data:
                problems.append(Problem(fpath, f"required field is missing: {f.metadata.get('help', '')}"))
            required_missing = True
    if required_missing:
        raise _Invalid
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check(path, problems)
    return obj


def parse_strict(cls: type, data: Any, path: str = "") -> Any:
    """Like :func:`parse` but raises :class:`ConfigError` if anything is wrong."""
    problems: list[Problem] = []
    try:
        obj = parse(cls, data, path, problems)
    except _Invalid:
        obj = None
    if problems:
        raise ConfigError(problems)
    return obj


def parse_collect(cls: type, data: Any, path: str, problems: list[Problem]) -> Any | None:
    """Like :func:`parse` but returns None (instead of raising) when the object cannot be built."""
    try:
        return parse(cls, data, path, problems)
    except _Invalid:
        return None


def to_dict(obj: Any) -> Any:
    """Dataclass -> JSON-ready dict using the JSON keys (``class`` etc.)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {json_key(f): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (a fresh one for factories); ``_MISSING`` if required."""
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def nondefault(obj: Any) -> dict[str, Any]:
    """The JSON dict of the fields of dataclass ``obj`` whose values differ from their defaults, nested
    dataclasses included (an all-default one is left out) and ``identity=False`` fields skipped.

    The identity of a thing configured by a dataclass (as open_lth's ``Hparams``): adding a field with a
    default never changes the identity of existing configurations."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.init or not f.metadata.get("identity", True):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            nested = nondefault(value)
            if nested:
                out[json_key(f)] = nested
        elif value != field_default(f):
            out[json_key(f)] = to_dict(value)
    return out


def non_identity_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted JSON paths of the ``identity=False`` fields of dataclass ``cls`` (nested ones included)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, json_key(f))
        if not f.metadata.get("identity", True):
            out.append(key)
        elif dataclasses.is_dataclass(hints[f.name]):
            out.extend(non_identity_paths(hints[f.name], key))
    return out


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(json path, type, default, help) rows for documentation of a dataclass tree."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, json_key(f))
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_fields(tp, key))
            continue
        default = field_default(f)
        default = "required" if default is _MISSING else repr(default)
        rows.append((key, _describe(tp), default, f.metadata.get("help", "")))
    return rows
