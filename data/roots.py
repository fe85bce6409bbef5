"""Where datasets live (``dataset.root``, ``$PAI_DATASETS``, ``./datasets``) and the error that says a
dataset is missing, what was looked for where and how to provide it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

ENV_VAR = "PAI_DATASETS"
DEFAULT_ROOT = "./datasets"


def resolve_root(root: Optional[str | os.PathLike]) -> Path:
    """The datasets folder.  Precedence: a ``dataset.root`` other than the default ``./datasets``; else
    ``$PAI_DATASETS`` when set; else ``./datasets`` (relative to the working directory)."""
    if root is None or str(root) == "" or os.path.normpath(str(root)) == os.path.normpath(DEFAULT_ROOT):
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(os.path.expanduser(str(root)))


class DatasetUnavailable(FileNotFoundError):
    """A dataset is missing (and could not be downloaded); the message says what was looked for where
    and how to provide it."""


def missing_error(name: str, looked_for: Sequence[str | Path], how: str, cause: str = "") -> DatasetUnavailable:
    """Build the user-facing error for a missing dataset."""
    lines = [f"dataset '{name}' is not available.", "Looked for:"]
    lines += [f"  - {p}" for p in looked_for]
    if cause:
        lines.append(f"Cause: {cause}")
    lines.append(f"How to provide it: {how}")
    lines.append(f"The datasets folder is dataset.root when set to something other than {DEFAULT_ROOT}, else "
                 f"${ENV_VAR} when set, else {DEFAULT_ROOT}.")
    return DatasetUnavailable("\n".join(lines))
