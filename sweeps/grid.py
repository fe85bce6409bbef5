"""Grid expansion: a base config plus ``--set PATH=V1,V2`` axes -> one complete config per grid point.

Paths are dotted JSON paths into the config file (``training.compressor.sparsity``); the short forms
in :data:`SHORTCUTS` save typing (``compressor.sparsity``).  Values are parsed as JSON where possible
(numbers, ``true``/``false``, ``null``, lists, objects) and kept as strings otherwise.  Commas inside
brackets or quotes do not split values, so ``--set optimizer.kwargs.lr_drops=[80,120],[60,90]`` gives two.
A value ``B^K1:K2[:STEP]`` is the powers ``B^k`` for ``k = K1, K1 + STEP, ... <= K2`` (STEP 1 by default;
``B^K`` alone is one power), written as numbers rounded to 12 significant digits (:func:`power_values`):
``compressor.density=0.8^1:10`` (the 0.8^k densities of NTK-SAP and PHEW), ``compressor.compression=10^0.5:3:0.5``.

Nothing here touches the disk; :mod:`sweeps.write` validates and writes the points.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from runspec.paths import (  # noqa: F401 - re-exported: sweeps.grid's names since the start
    ALIASES,
    COMPRESSOR_PREFIX,
    SHORTCUTS,
    expand_path,
    get_path,
    parse_value,
    path_help,
    set_path,
)
from utils.naming import slug


class SweepSpecError(ValueError):
    """A malformed ``--set`` argument (no '=', empty path or empty value list)."""


def split_values(text: str) -> list[str]:
    """Split on commas that are outside brackets, braces and double quotes."""
    parts, depth, quoted, current = [], 0, False, []
    escaped = False
    for ch in text:
        if quoted:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


@dataclass(frozen=True)
class Axis:
    """One swept field: its full dotted path, the text the user typed and the values."""

    path: str
    values: tuple[Any, ...]
    given: str = ""

    @property
    def is_compressor_field(self) -> bool:
        return self.path.startswith(COMPRESSOR_PREFIX)


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
POWER = re.compile(rf"^({_NUMBER})\^({_NUMBER})(?::({_NUMBER}))?(?::({_NUMBER}))?$")
MAX_POWERS = 10_000  # values one power expression may expand to


def power_values(text: str) -> list[Any] | None:
    """The values of a power expression ``B^K1:K2[:STEP]`` (see the module docstring), or None when ``text``
    is not one.  ``k = K1 + i * STEP`` (no accumulated rounding) up to ``K2`` inclusive (within 1e-9 steps);
    each ``B^k`` rounded to 12 significant digits, an integral value written as an integer.  A malformed range
    (STEP <= 0, K2 < K1, more than :data:`MAX_POWERS` values) or a power that is not a finite real number is a
    :class:`SweepSpecError`."""
    m = POWER.match(text.strip())
    if m is None:
        return None
    base, start = float(m.group(1)), float(m.group(2))
    stop = float(m.group(3)) if m.group(3) is not None else start
    step = float(m.group(4)) if m.group(4) is not None else 1.0
    if step <= 0:
        raise SweepSpecError(f"{text!r}: the exponent step must be positive, got {step:g}")
    if stop < start:
        raise SweepSpecError(f"{text!r}: the last exponent {stop:g} is below the first {start:g}")
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > MAX_POWERS:
        raise SweepSpecError(f"{text!r}: {count} values, more than {MAX_POWERS}")
    values: list[Any] = []
    for i in range(count):
        try:
            value = base ** (start + i * step)
        except (OverflowError, ZeroDivisionError) as exc:
            raise SweepSpecError(f"{text!r}: {base:g}^{start + i * step:g} cannot be computed ({exc})") from exc
        if isinstance(value, complex) or not math.isfinite(value):
            raise SweepSpecError(f"{text!r}: {base:g}^{start + i * step:g} is not a finite real number")
        value = float(f"{value:.12g}")
        values.append(int(value) if value.is_integer() and abs(value) < 2**53 else value)
    return values


def parse_set(spec: str) -> Axis:
    """``"compressor.sparsity=0.9,0.95"`` -> ``Axis("training.compressor.sparsity", (0.9, 0.95))``."""
    if "=" not in spec:
        raise SweepSpecError(f"--set {spec!r}: expected PATH=VALUE[,VALUE...]")
    path, _, values = spec.partition("=")
    if not path.strip():
        raise SweepSpecError(f"--set {spec!r}: empty path")
    texts = split_values(values)
    if not values.strip() or any(t == "" for t in texts):
        raise SweepSpecError(f"--set {spec!r}: empty value in the list")
    try:
        parsed = tuple(v for t in texts for v in (power_values(t) or [parse_value(t)]))
    except SweepSpecError as exc:
        raise SweepSpecError(f"--set {spec!r}: {exc}") from None
    seen: list[Any] = []
    for v in parsed:
        if v in seen:
            raise SweepSpecError(f"--set {spec!r}: value {v!r} appears twice")
        seen.append(v)
    return Axis(expand_path(path), parsed, path.strip())


def _value_text(value: Any) -> str:
    """A swept value as a file-name part (``_`` separates the parts, so it is not kept)."""
    return slug(value if isinstance(value, str) else json.dumps(value, separators=(",", "")), keep=".-")


def _labels(axes: list[Axis]) -> dict[str, str]:
    """Shortest dotted suffix of each path that is unique among the axes (``sparsity``, ``options.seed``).

    A field inside a free-form dict keeps that dict's name (``options.seed`` is not ``general.seed``).
    """
    keys = {a.path: a.path.split(".") for a in axes}
    length = {p: 2 if len(k) > 1 and k[-2] in ("options", "kwargs") else 1 for p, k in keys.items()}
    while True:
        labels = {p: ".".join(keys[p][-length[p]:]) for p in keys}
        clashing = [p for p in keys if list(labels.values()).count(labels[p]) > 1 and length[p] < len(keys[p])]
        if not clashing:
            return labels
        for p in clashing:
            length[p] += 1


def point_name(assignments: dict[str, Any], axes: list[Axis]) -> str:
    """Readable file stem: ``snip_sparsity0.9_seed42``; a ``class`` value stands alone."""
    labels = _labels(axes)
    parts = []
    for axis in axes:
        if axis.path not in assignments:
            continue
        value = _value_text(assignments[axis.path])
        label = labels[axis.path]
        parts.append(value if label == "class" or label.endswith(".class") else f"{label.replace('.', '-')}{value}")
    return "_".join(parts) or "base"


@dataclass
class SweepPoint:
    """One grid point: its file stem, the swept values and the complete config dict."""

    name: str
    assignments: dict[str, Any]
    data: dict[str, Any] = field(repr=False)
    dense: bool = False


def expand(base: dict[str, Any], axes: list[Axis], *, with_dense: bool = False,
           dense_class: str = "none") -> list[SweepPoint]:
    """Every combination of the axes' values applied to a copy of ``base`` (first axis varies slowest).

    With ``with_dense`` the dense baseline (``training.compressor.class = dense_class``) is added once
    per combination of the axes that are *not* compressor fields (seed, learning rate, ...); its
    compressor fields keep the base's values, with sparsity 0 and no criterion options.  ``general.id``
    becomes ``<base id>_<point name>`` (or the point name) unless it is swept.
    """
    paths = [a.path for a in axes]
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        raise SweepSpecError(f"swept twice: {', '.join(dupes)}")
    points: list[SweepPoint] = []
    for combo in itertools.product(*(a.values for a in axes)):
        assignments = dict(zip(paths, combo))
        data = copy.deepcopy(base)
        for path, value in assignments.items():
            set_path(data, path, value)
        _drop_other_forms(data, assignments)
        points.append(SweepPoint(point_name(assignments, axes), assignments, data))
    if with_dense:
        outer = [a for a in axes if not a.is_compressor_field]
        dense_axes = [Axis("training.compressor.class", (dense_class,))] + outer
        for combo in itertools.product(*(a.values for a in outer)):
            assignments = {"training.compressor.class": dense_class, **dict(zip([a.path for a in outer], combo))}
            data = copy.deepcopy(base)
            for path, value in assignments.items():
                set_path(data, path, value)
            set_path(data, "training.compressor.sparsity", 0.0)
            for form in ("density", "compression"):  # the base's other sparsity forms would contradict the 0
                get_path(data, "training.compressor", {}).pop(form, None)
            set_path(data, "training.compressor.options", {})
            points.append(SweepPoint(point_name(assignments, dense_axes), assignments, data, dense=True))
    base_id = get_path(base, "general.id")
    unique: list[SweepPoint] = []
    seen: dict[str, SweepPoint] = {}
    for p in points:
        if "general.id" not in assignments_keys(axes):
            set_path(p.data, "general.id", f"{base_id}_{p.name}" if base_id else p.name)
        if p.name in seen and seen[p.name].data == p.data:
            continue  # e.g. the dense baseline also listed in compressor.class
        seen[p.name] = p
        unique.append(p)
    return unique


SPARSITY_FORMS = ("sparsity", "density", "compression")


def _drop_other_forms(data: dict[str, Any], assignments: dict[str, Any]) -> None:
    """A point that sets one form of the sparsity (``sparsity``, ``density`` or ``compression``) drops the
    base's other forms, which would contradict it (sweeping two forms at once stays an error of the point)."""
    swept = [f for f in SPARSITY_FORMS if f"{COMPRESSOR_PREFIX}{f}" in assignments]
    comp = get_path(data, "training.compressor")
    if swept and isinstance(comp, dict):
        for form in SPARSITY_FORMS:
            if form not in swept:
                comp.pop(form, None)


def assignments_keys(axes: list[Axis]) -> set[str]:
    return {a.path for a in axes}
