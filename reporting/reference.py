"""Published numbers beside ours: ``python main.py report RESULTS --reference FILE``.

A reference file is a CSV with one published cell per line::

    dataset,model,criterion,sparsity,mean,std,source
    cifar10,resnet18,snip,0.9,90.36,0.34,FTS paper Table 1 (...)

``mean`` and ``std`` are in the report's display unit (percent for accuracy metrics, as papers print
them); an empty ``std`` (or ``null``) means the source gives none.  Rows are matched to our aggregated
cells by (dataset, model, criterion, sparsity); names are compared case-insensitively.  For every match
the comparison gives our mean ± std (n seeds), the difference ours − published, and whether our mean
lies within the published ± std (|difference| <= std); a published cell we have no run for is listed
as ``no run``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from reporting.aggregate import format_cell, metric_scale
from utils.io import read_text_file

COLUMNS = ("dataset", "model", "criterion", "sparsity", "mean", "std", "source")
KEYS = ("dataset", "model", "criterion", "sparsity")
NO_STD = "no published std"


class ReferenceError(ValueError):
    """A reference file that cannot be read; the message names the file, the line and the column."""


def _number(text: str, where: str, column: str, *, optional: bool = False) -> float | None:
    text = (text or "").strip()
    if optional and text.lower() in ("", "null", "none", "nan"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ReferenceError(f"{where}: column '{column}' is {text!r}, not a number") from None
    if not math.isfinite(value) or (optional and value < 0):
        raise ReferenceError(f"{where}: column '{column}' is {text!r}; valid: a finite number"
                             + (" >= 0, or empty for none" if optional else ""))
    return value


def load_reference(path: str | Path) -> pd.DataFrame:
    """The published cells of a reference CSV (see the module docstring); :class:`ReferenceError` naming the
    file, line and column for a missing file, a missing column or a value that is not a number."""
    path = Path(path)
    try:
        text = read_text_file(path, str(path), "reference file")
    except ValueError as exc:
        raise ReferenceError(str(exc)) from None
    reader = csv.DictReader(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ReferenceError(f"{path}: missing column(s) {', '.join(missing)}; expected the header "
                             f"{','.join(COLUMNS)}")
    rows = []
    for i, row in enumerate(reader, start=2):
        where = f"{path}: line {i}"
        for c in ("dataset", "model", "criterion"):
            if not (row.get(c) or "").strip():
                raise ReferenceError(f"{where}: column '{c}' is empty")
        sparsity = _number(row["sparsity"], where, "sparsity")
        if not 0 <= sparsity < 1:
            raise ReferenceError(f"{where}: column 'sparsity' is {sparsity:g}; valid: [0, 1)")
        rows.append({"dataset": row["dataset"].strip(), "model": row["model"].strip(),
                     "criterion": row["criterion"].strip(), "sparsity": sparsity,
                     "mean": _number(row["mean"], where, "mean"),
                     "std": _number(row["std"], where, "std", optional=True),
                     "source": (row.get("source") or "").strip()})
    if not rows:
        raise ReferenceError(f"{path}: no published rows under the header")
    return pd.DataFrame(rows, columns=list(COLUMNS))


def compare(agg: pd.DataFrame, reference: pd.DataFrame, metric: str,
            dataset_names: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (published cell, our matching group): published, ours, difference, within ± std.
    ``dataset_names`` maps our dataset names to the reference's (``report --reference-dataset
    imagefolder=cifar10``: runs on the CIFAR-10 JPEG folders are ``imagefolder`` runs)."""
    scale = metric_scale(metric)
    ours = agg[~agg["dense"]] if not agg.empty else agg
    if dataset_names and len(ours):
        names = {k.lower(): v for k, v in dataset_names.items()}
        ours = ours.assign(dataset=ours["dataset"].map(lambda d: names.get(str(d).lower(), d)))
    out = []
    for _, ref in reference.iterrows():
        published = f"{ref['mean']:.2f} ± {ref['std']:.2f}" if ref["std"] is not None and not pd.isna(ref["std"]) \
            else f"{ref['mean']:.2f} ± –"
        base = {"dataset": ref["dataset"], "model": ref["model"], "criterion": ref["criterion"],
                "sparsity": ref["sparsity"], "published": published}
        hits = ours[(ours["dataset"].str.lower() == ref["dataset"].lower())
                    & (ours["model"].str.lower() == ref["model"].lower())
                    & (ours["criterion"].str.lower() == ref["criterion"].lower())
                    & (ours["sparsity"].astype(float) - ref["sparsity"]).abs().le(1e-9)] if len(ours) else ours
        if hits.empty:
            out.append({**base, "warmup": "", "variant": "", "ours": "no run", "difference": None,
                        "within_std": ""})
            continue
        for _, r in hits.iterrows():
            diff = r["mean"] * scale - ref["mean"]
            std = ref["std"]
            within = NO_STD if std is None or pd.isna(std) else ("yes" if abs(diff) <= std + 1e-9 else "no")
            out.append({**base, "warmup": r["warmup"], "variant": r["variant"],
                        "ours": format_cell(r["mean"], r["std"], int(r["n"]), scale), "difference": round(diff, 2),
                        "within_std": within})
    cols = ["dataset", "model", "criterion", "sparsity", "warmup", "variant", "published", "ours", "difference",
            "within_std"]
    frame = pd.DataFrame(out, columns=cols)
    if (frame["variant"] == "").all():
        frame = frame.drop(columns="variant")
    return frame


def unmatched_reason(agg: pd.DataFrame, reference: pd.DataFrame, dataset_names: dict[str, str] | None = None) -> str:
    """Why no published cell matched: for each key, the reference's values that none of our pruned runs has
    (with the hint for image-folder runs); "" when some cell matched or there is nothing to compare."""
    ours = agg[~agg["dense"]] if not agg.empty else agg
    if ours.empty:
        return "no completed pruned run to compare with the published cells"
    names = {k.lower(): v.lower() for k, v in (dataset_names or {}).items()}
    lines = []
    for key in ("dataset", "model", "criterion"):
        have = {names.get(str(v).lower(), str(v).lower()) if key == "dataset" else str(v).lower() for v in ours[key]}
        want = sorted({str(v).lower() for v in reference[key]} - have)
        if want:
            lines.append(f"{key}: the reference has {', '.join(want)}; the runs have {', '.join(sorted(have))}")
    have_s = {round(float(v), 9) for v in ours["sparsity"]}
    want_s = sorted({round(float(v), 9) for v in reference["sparsity"]} - have_s)
    if want_s:
        lines.append(f"sparsity: the reference has {', '.join(f'{v:g}' for v in want_s)}; the runs have "
                     f"{', '.join(f'{v:g}' for v in sorted(have_s))}")
    text = "no published cell matches a run (cells match by dataset, model, criterion and sparsity):\n  " + \
        "\n  ".join(lines or ["every key has matching values, but no run has all four of a cell"])
    if any(str(d).lower() in ("imagefolder", "imagenet") for d in ours["dataset"]) and not dataset_names:
        text += ("\n  runs on an image folder are 'imagefolder' runs whatever the images are; to compare runs on "
                 "the CIFAR-10 JPEG folders with cifar10 cells: --reference-dataset imagefolder=cifar10")
    return text


def summary_line(frame: pd.DataFrame) -> str:
    """``"3 of 5 compared cells within the published ± std (2 without a published std); 4 published cells have
    no run"``."""
    compared = frame[frame["ours"] != "no run"]
    within = int((compared["within_std"] == "yes").sum())
    with_std = int((compared["within_std"] != NO_STD).sum())
    no_std = len(compared) - with_std
    text = f"{within} of {with_std} compared cells within the published ± std"
    if no_std:
        text += f" ({no_std} compared without a published std)"
    missing = int((frame["ours"] == "no run").sum())
    return text + (f"; {missing} published cells have no run" if missing else "")
