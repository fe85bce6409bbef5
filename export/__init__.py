"""Export a completed run's network: a registry of formats, one class per format, one file each.

    python main.py export RUN --format torch-prune --out DIR      # or: sparse, ... (main.py list)

    import export
    manifest = export.export_run("results/pbt/.../seed_0-<hash>", "sparse", "exported/")

Every format reads the run through :func:`export.base.load_run` (resolved ``config.json``, ``final_model.pt``,
``mask.pt``; clear errors for a run that is not completed or a file that is missing) and writes its files
and ``export.json`` (format, source run, files and their sizes in bytes, the size of the dense
``final_model.pt`` and the ratio) into the output folder.  Adding a format: see :mod:`export.base`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from export.base import MANIFEST, Exporter, ExportError, LoadedRun, file_sizes, load_run
from utils.io import read_json, write_json
from utils.registry import Registry, UnknownName

FORMATS: Registry[type[Exporter]] = Registry("export format", plugins=__name__)
register = FORMATS.register
names = FORMATS.names


def get(name: str) -> type[Exporter]:
    """The format class registered under ``name`` (case-insensitive); ExportError lists the valid ones."""
    try:
        cls = FORMATS.get(name)
    except UnknownName as exc:
        raise ExportError(str(exc)) from None
    if not (isinstance(cls, type) and issubclass(cls, Exporter)):
        raise ExportError(f"'{name}' is not an Exporter subclass (got {cls!r})")
    return cls


def _earlier_files(out: Path) -> set[str]:
    """The files that a previous export into ``out`` wrote (its ``export.json``), those still there: a new
    export replaces them, so no file of another format is left beside a manifest that does not list it."""
    try:
        listed = read_json(out / MANIFEST).get("files", {})
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in listed if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")
            and name != MANIFEST and (out / name).is_file()}


def export_run(run: str | Path, fmt: str, out: str | Path, *, results: str | Path | None = None) -> dict[str, Any]:
    """Export the completed run ``run`` (a run folder, or a config file resolved under ``results``) in
    format ``fmt`` into the folder ``out``; returns the manifest written to ``out/export.json``."""
    cls = get(fmt)
    loaded = load_run(run, results)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder (--out names the folder to write into)")
    out.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_files(out)
    written = cls().export(loaded, out)
    files = file_sizes(written.pop("files"), out)
    for name in earlier - set(files):  # a reused folder: the previous export's files go with its manifest
        (out / name).unlink(missing_ok=True)
    dense = loaded.dense_file.stat().st_size
    total = sum(files.values())
    manifest = {"format": cls.registered_name, "source_run": str(loaded.run_dir.resolve()),
                "run_hash": loaded.spec.hash(), "model": loaded.model_inputs, "files": files, "bytes": total,
                "dense_file": str(loaded.dense_file.resolve()), "dense_bytes": dense,
                "size_ratio": total / dense if dense else None, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **written}
    write_json(out / MANIFEST, manifest)
    return manifest


__all__ = ["FORMATS", "MANIFEST", "ExportError", "Exporter", "LoadedRun", "export_run", "get", "load_run", "names",
           "register"]
