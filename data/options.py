"""The option dataclasses shared by the RGB datasets (augmentation, normalisation statistics)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from utils.schema import Problem, option


def stat_option(stat: Literal["mean", "std"], default: str, purpose: str = "") -> Any:
    """The ``mean`` or ``std`` option of an RGB dataset: per-channel numbers, null for ``default`` (named in
    the help text); a std must be positive."""
    bounds: dict[str, Any] = {"min": 0, "min_exclusive": True} if stat == "std" else {}
    return option(None, f"per-channel {stat}{purpose} (default: {default})", **bounds)


@dataclass


class RgbOptions:
    """Base of the RGB datasets' options.  Subclasses declare ``mean`` and ``std`` with :func:`stat_option`
    (after their own fields, so the JSON keys keep their order)."""

    def check(self, path: str, problems: list[Problem]) -> None:
        """``mean`` / ``std``, when given, must hold three numbers (R, G, B)."""
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                problems.append(Problem(f"{path}.{key}", f"expected 3 numbers (R, G, B), got {value}"))


@dataclass


class CropFlipOptions(RgbOptions):
    """Options of the datasets trained with a random crop after zero padding and a horizontal flip
    (cifar10 / cifar100 with these help texts; tinyimagenet overrides those that name its crop size and
    default statistics)."""

    augment: bool = option(True, "random crop with padding + horizontal flip for training")
    padding: int = option(4, "zero padding (pixels) before the random 32x32 crop", min=0)
    mean: Optional[list[float]] = stat_option("mean", "the dataset's", " for normalisation")
    std: Optional[list[float]] = stat_option("std", "the dataset's", " for normalisation")
