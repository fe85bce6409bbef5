"""``python main.py report RESULTS_DIR``: tables, CSVs, LaTeX, figures and the list of runs to redo.

Writes into the report folder::

    report.md         everything below in one page (table, differing fields, problems, figures)
    table.md          the Markdown table (also printed)      table.tex   the same table (booktabs)
    table_connectivity.md   effective sparsity and collapsed layers per cell, failed runs counted
                      (reporting.aggregate.connectivity_table; written when runs recorded them)
    runs.csv          one row per run folder (any status)    aggregated.csv  one row per group
    issues.csv        failed / interrupted / running / broken / invalid / missing grid points, runs
                      whose mask.pt cannot be used (damaged), and copies of a run counted once (duplicate)
    rerun.txt         config files to run again (python main.py run $(cat rerun.txt))
    reference.md, reference.csv   with --reference: published cells beside ours (reporting.reference)
    overlap.csv, stability.csv, layer_density.csv
    figures/*.png, figures/*.pdf

Every file is first written (atomically, :mod:`utils.io`) into a hidden staging folder beside the report
folder, then renamed into it, ``report.md`` last: a write that fails (a full disk) raises
:class:`utils.io.WriteError` naming the report's file and leaves the previous report as it was.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from tqdm import tqdm

from reporting import figures as figs
from reporting.aggregate import (
    Grouping,
    aggregate,
    connectivity_table,
    cost_table,
    metric_scale,
    options_seed_groups,
    pivot_table,
)
from reporting.masks import MaskReader, chance_iou, mask_iou, pairing_key
from reporting.reference import compare, summary_line, unmatched_reason
from reporting.render import to_latex, to_markdown
from reporting.runs import RunSet, is_dense, load_runs
from runspec import RunSpec
from utils.io import WriteError, json_files, write_failure, write_text
from utils.schema import ConfigError

ISSUE_COLUMNS = ["status", "config_file", "run_dir", "reason"]


@dataclass
class Report:
    """What :func:`build_report` computed and where it wrote it."""

    out: Path
    metric: str
    n_runs: int
    aggregated: pd.DataFrame
    table: pd.DataFrame
    issues: pd.DataFrame
    grouping: Grouping
    sparsity: float | None = None
    overlap: dict[tuple, pd.DataFrame] = field(default_factory=dict)
    stability: pd.DataFrame = field(default_factory=pd.DataFrame)
    density: pd.DataFrame = field(default_factory=pd.DataFrame)
    figures: list[Path] = field(default_factory=list)
    markdown: str = ""
    reference: pd.DataFrame | None = None
    connectivity: pd.DataFrame = field(default_factory=pd.DataFrame)


# ---------------------------------------------------------------------------------------------- issues
def collect_issues(runset: RunSet, sweep_dir: str | Path | None = None,
                   damaged: dict[str, str] | None = None) -> pd.DataFrame:
    """Runs that did not complete, invalid configs, (with a sweep folder) grid points never run, and the
    completed runs of ``damaged`` (run folder -> why its mask.pt cannot be used).

    A sweep config is matched to its run folder exactly as the runner does: ``RunSpec.run_dir(root)``.
    """
    runs = runset.runs
    rows = [{k: _none(v) for k, v in r.items()}
            for _, r in runs.loc[runs["status"] != "completed", ISSUE_COLUMNS].iterrows()]
    for row in rows:
        if row["status"] == "running":
            row["reason"] = row["reason"] or "status 'running': in progress, or killed without a trace"
    invalid_files = {str(Path(r["config_file"]).resolve()) for r in runset.invalid if r.get("config_file")}
    rows += [{k: r.get(k) for k in ISSUE_COLUMNS} for r in runset.invalid]
    files = dict(zip(runs["run_dir"], runs["config_file"]))
    rows += [{"status": "damaged", "config_file": _none(files.get(d)), "run_dir": d, "reason": why}
             for d, why in sorted((damaged or {}).items())]
    if sweep_dir is not None:
        by_dir = {str(Path(d).resolve()): i for i, d in enumerate(runs["run_dir"])}
        by_file: dict[str, list[str]] = {}
        for d, f in zip(runs["run_dir"], runs["config_file"]):
            if isinstance(f, str) and f:
                by_file.setdefault(str(Path(f).resolve()), []).append(d)
        files = json_files(sweep_dir)
        if not files:
            rows.append({"status": "missing", "config_file": str(sweep_dir), "run_dir": None,
                         "reason": "no *.json configs in the sweep folder"})
        for f in files:
            try:
                spec = RunSpec.load(f)
            except ConfigError as exc:
                if str(f.resolve()) not in invalid_files:
                    rows.append({"status": "invalid", "config_file": str(f), "run_dir": None,
                                 "reason": "; ".join(str(p) for p in exc.problems)})
                continue
            target = spec.run_dir(runset.root)
            i = by_dir.get(str(target.resolve()))
            if i is None:
                stale = by_file.get(str(f.resolve()))
                reason = "no run folder for this config"
                if stale:
                    reason += (" (this file was run into " + ", ".join(stale) + " with a different resolved config: "
                               "the file or the framework's defaults changed since)")
                rows.append({"status": "missing", "config_file": str(f), "run_dir": str(target), "reason": reason})
                continue
            for row in rows:
                if row["run_dir"] and Path(row["run_dir"]).resolve() == target.resolve() and not row["config_file"]:
                    row["config_file"] = str(f)
    out = pd.DataFrame(rows, columns=ISSUE_COLUMNS).astype(object)
    out = out.where(out.notna(), None)
    order = {"failed": 0, "interrupted": 1, "broken": 2, "running": 3, "invalid": 4, "missing": 5, "damaged": 6,
             "duplicate": 7}
    return out.sort_values(["status", "config_file"], key=lambda s: s.map(lambda v: order.get(v, 9))
                           if s.name == "status" else s.fillna("")).reset_index(drop=True)


# --------------------------------------------------------------------------------------------- masks
def _closest(values: list[float], target: float) -> float | None:
    return min(values, key=lambda v: (abs(v - target), -v)) if values else None


def _at_sparsity(runs: pd.DataFrame, s: float) -> pd.DataFrame:
    return runs[(~runs["criterion"].map(is_dense)) & runs["sparsity"].map(lambda x: math.isclose(x, s))]


def layer_density_frame(runset: RunSet, sparsity: float) -> pd.DataFrame:
    """Mean remaining density per (dataset, model, warmup, criterion, layer) over seeds at this sparsity."""
    rows = []
    for _, r in _at_sparsity(runset.completed(), sparsity).iterrows():
        dens = runset.results.get(r["run_dir"], {}).get("layer_density")
        dens = {k: d for k, d in dens.items() if isinstance(d, (int, float))} if isinstance(dens, dict) else {}
        for i, (layer, d) in enumerate(dens.items()):
            rows.append({"dataset": r["dataset"], "model": r["model"], "warmup": r["warmup"],
                         "criterion": r["criterion"], "layer": layer, "layer_index": i, "density": d})
    cols = ["dataset", "model", "warmup", "criterion", "layer", "layer_index"]
    if not rows:
        return pd.DataFrame(columns=cols + ["density", "n"])
    frame = pd.DataFrame(rows)
    return frame.groupby(cols, sort=True).agg(density=("density", "mean"), n=("density", "size")).reset_index()


def overlap_matrices(runset: RunSet, sparsity: float, progress: bool = True,
                     reader: MaskReader | None = None) -> dict[tuple, pd.DataFrame]:
    """(dataset, model, warmup) -> criteria x criteria mean IoU over runs paired by seed and settings
    (a mask that cannot be read is left out, and recorded in ``reader.problems``)."""
    reader = reader or MaskReader()
    runs = _at_sparsity(runset.completed(), sparsity)
    out: dict[tuple, pd.DataFrame] = {}
    for key, block in runs.groupby(["dataset", "model", "warmup"], sort=True):
        ious: dict[tuple[str, str], list[float]] = {}
        pairs = block.assign(pair=block["run_dir"].map(lambda d: pairing_key(runset.configs[d])))
        for _, part in tqdm(list(pairs.groupby("pair")), desc=f"mask overlap {key[0]}/{key[1]}",
                            disable=not progress or len(pairs) < 20):
            if part["criterion"].nunique() < 2:
                continue
            masks = {d: reader.get(d) for d in part["run_dir"]}
            crit = dict(zip(part["run_dir"], part["criterion"]))
            for a, b in itertools.combinations(sorted(masks), 2):
                if crit[a] == crit[b] or masks[a] is None or masks[b] is None:
                    continue
                ca, cb = sorted((crit[a], crit[b]))
                ious.setdefault((ca, cb), []).append(mask_iou(masks[a], masks[b]))
        if not ious:
            continue
        names = sorted({c for pair in ious for c in pair})
        matrix = pd.DataFrame(float("nan"), index=pd.Index(names, name="criterion"), columns=names)
        for c in names:
            matrix.loc[c, c] = 1.0
        for (a, b), values in ious.items():
            matrix.loc[a, b] = matrix.loc[b, a] = sum(values) / len(values)
        out[key] = matrix
    return out


def stability_frame(runset: RunSet, reader: MaskReader | None = None) -> pd.DataFrame:
    """Mask IoU between runs that differ only in ``training.compressor.options.seed``."""
    reader = reader or MaskReader()
    runs = runset.runs.set_index("run_dir")
    rows = []
    for dirs in options_seed_groups(runset).values():
        masks = {d: reader.get(d) for d in dirs}
        values = [mask_iou(masks[a], masks[b]) for a, b in itertools.combinations(dirs, 2)
                  if masks[a] is not None and masks[b] is not None]
        r = runs.loc[dirs[0]]
        for v in values:
            rows.append({"dataset": r["dataset"], "model": r["model"], "warmup": r["warmup"],
                         "criterion": r["criterion"], "sparsity": r["sparsity"], "iou": v})
    cols = ["dataset", "model", "warmup", "criterion", "sparsity"]
    if not rows:
        return pd.DataFrame(columns=cols + ["mean", "std", "pairs", "chance"])
    frame = (pd.DataFrame(rows).groupby(cols, sort=True)
             .agg(mean=("iou", "mean"), std=("iou", "std"), pairs=("iou", "size")).reset_index())
    frame["chance"] = frame["sparsity"].map(chance_iou)
    return frame


# -------------------------------------------------------------------------------------------- report
RERUN_STATES = ("failed", "interrupted", "missing", "broken", "damaged")
"""The issues a plain rerun acts on: it resumes or reruns the unfinished, and repairs a completed run whose
files are damaged from its checkpoint (or says why it cannot: ``launch.runner.completed_damage``)."""


class UnknownMetric(ValueError):
    """``--metric`` names a value that no completed run recorded; the message lists the valid ones."""


def build_report(results: str | Path, out: str | Path, *, metric: str = "best_val_test_acc",
                 sweep_dir: str | Path | None = None, sparsity: float | None = None, figures: bool = True,
                 progress: bool = True, log: Callable[[str], None] = print,
                 reference: pd.DataFrame | None = None, reference_datasets: dict[str, str] | None = None) -> Report:
    """Read every run under ``results`` and write the report folder ``out`` (see the module docstring).
    Raises :class:`UnknownMetric` when completed runs exist and none has ``metric``."""
    if not Path(results).is_dir():
        raise FileNotFoundError(f"{results}: no such results folder (give the root passed to run --results)")
    out = Path(out)
    runset = load_runs(results, progress=progress)
    completed = runset.completed()
    if not completed.empty and (metric not in completed.columns or completed[metric].isna().all()):
        known = sorted(c for c in completed.columns if c.startswith(("final_test_", "best_val_test_"))
                       and completed[c].notna().any())
        raise UnknownMetric(f"--metric {metric!r}: no completed run has it in results.json; valid: {', '.join(known)}")
    if runset.duplicates:
        log(f"warning: {runset.duplicates} run folder(s) are copies of other runs (same run identity): each run is "
            f"counted once; the copies are listed as 'duplicate' in {out / 'issues.csv'}")
    agg, grouping = aggregate(runset, metric)
    md_table = pivot_table(agg, metric=metric)
    tex_table = pivot_table(agg, bold=(r"\textbf{", "}"), metric=metric)

    pruned = sorted(agg.loc[~agg["dense"], "sparsity"].unique()) if not agg.empty else []
    chosen = sparsity if sparsity is not None else _closest([float(s) for s in pruned], 0.9)
    report = Report(out, metric, len(runset.runs), agg, md_table, pd.DataFrame(), grouping, chosen)
    report.connectivity = connectivity_table(agg, failed_runs(runset, grouping))
    if sparsity is not None and not any(math.isclose(sparsity, float(x)) for x in pruned):
        present = ", ".join(f"{x:g}" for x in pruned)
        log(f"warning: no completed pruned run at sparsity {sparsity:g}; present: {present}")
    reader = MaskReader()
    if chosen is not None:
        report.density = layer_density_frame(runset, chosen)
        report.overlap = overlap_matrices(runset, chosen, progress, reader)
    report.stability = stability_frame(runset, reader)
    report.issues = collect_issues(runset, sweep_dir, reader.problems)

    if reference is not None:
        report.reference = compare(agg, reference, metric, reference_datasets)
        if (report.reference["ours"] == "no run").all():
            log("warning: " + unmatched_reason(agg, reference, reference_datasets))
    table_md = to_markdown(md_table)
    with _staging(out) as stage:  # renamed into ``out`` on leaving without an error
        report.out = stage
        try:
            _write_files(report, runset, table_md, to_latex(tex_table, metric), figures)
        finally:
            report.out = out
            report.figures = [out / p.relative_to(stage) for p in report.figures]
    log(f"\n{metric}{' (%)' if metric_scale(metric) == 100 else ''}: mean ± std (n seeds); best per column in bold\n")
    log(table_md)
    log(_differences_text(grouping))
    if report.reference is not None:
        log(f"\npublished (--reference) beside ours, {metric}; difference = ours - published\n")
        log(to_markdown(report.reference))
        log(summary_line(report.reference))
    counts = runset.runs["status"].value_counts().to_dict() if not runset.runs.empty else {}
    log(f"\n{len(runset.runs)} run folders ({', '.join(f'{v} {k}' for k, v in sorted(counts.items())) or 'none'}); "
        f"{len(report.issues)} issue(s) listed in {out / 'issues.csv'}; "
        f"{len([p for p in report.figures if p.suffix == '.png'])} figures; report: {out / 'report.md'}")
    return report


class _staging:
    """``with _staging(out) as stage``: a new hidden folder beside ``out`` (same file system, so its files
    can be renamed into ``out``); on leaving without an error its files are renamed into ``out``
    (:func:`_publish`), and it is removed in any case.  An OSError inside becomes a :class:`WriteError` whose
    message names the file of ``out`` rather than of the staging folder, and says ``out`` is unchanged."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.stage: Path | None = None

    def __enter__(self) -> Path:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.staging-", dir=self.out.parent))
        except OSError as exc:
            raise write_failure(self.out, exc) from exc
        return self.stage

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        assert self.stage is not None
        try:
            if exc is None:
                _publish(self.stage, self.out)
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)
        if isinstance(exc, OSError):
            error = str(write_failure(self.out, exc)).replace(str(self.stage), str(self.out))
            raise WriteError(f"{error}; the previous report in {self.out} is unchanged") from exc


def _write_files(report: Report, runset: RunSet, table_md: str, table_tex: str, figures: bool) -> None:
    """Every file of the report, into ``report.out``."""
    out = report.out
    if report.reference is not None:
        _write_csv(out / "reference.csv", report.reference)
        write_text(out / "reference.md", to_markdown(report.reference) + "\n\n" + summary_line(report.reference) + "\n")
    _write_csvs(report, runset)
    if figures and not report.aggregated.empty:
        _draw_figures(report)
    write_text(out / "table.md", table_md + "\n")
    if not report.connectivity.empty:
        write_text(out / "table_connectivity.md", to_markdown(report.connectivity) + "\n")
    write_text(out / "table.tex", table_tex + "\n")
    report.markdown = render_page(report, runset, table_md)
    write_text(out / "report.md", report.markdown)


def _publish(stage: Path, out: Path) -> None:
    """Rename every file of ``stage`` into ``out`` (figures first, ``report.md`` last); files of ``out`` that
    this report did not write stay."""
    files = sorted((p for p in stage.rglob("*") if p.is_file()),
                   key=lambda p: (p.name == "report.md", p.parent == stage, str(p)))
    for src in files:
        target = out / src.relative_to(stage)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, target)
        except OSError as exc:
            raise write_failure(target, exc) from exc


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame.to_csv(index=False))


def _write_csvs(report: Report, runset: RunSet) -> None:
    """runs.csv, aggregated.csv, issues.csv, rerun.txt, layer_density.csv, stability.csv, overlap.csv."""
    out, issues, chosen = report.out, report.issues, report.sparsity
    runs_csv = runset.runs.copy()
    if not runs_csv.empty:
        runs_csv["variant"] = runs_csv["group"].map(report.grouping.variant).fillna("")
    _write_csv(out / "runs.csv", runs_csv)
    _write_csv(out / "aggregated.csv", report.aggregated)
    _write_csv(out / "issues.csv", issues)
    rerun = sorted({f for f, st in zip(issues["config_file"], issues["status"])
                    if f and st in RERUN_STATES and Path(f).is_file()})
    write_text(out / "rerun.txt", "".join(f + "\n" for f in rerun))
    _write_csv(out / "layer_density.csv", report.density)
    _write_csv(out / "stability.csv", report.stability)
    overlap_rows = [{"dataset": k[0], "model": k[1], "warmup": k[2], "a": a, "b": b, "iou": m.loc[a, b],
                     "sparsity": chosen, "chance": chance_iou(chosen)}
                    for k, m in report.overlap.items() for a in m.index for b in m.columns if a < b]
    _write_csv(out / "overlap.csv", pd.DataFrame(overlap_rows))


def _draw_figures(report: Report) -> None:
    agg, metric, chosen, fig_dir = report.aggregated, report.metric, report.sparsity, report.out / "figures"
    report.figures += figs.accuracy_vs_sparsity(agg, metric, fig_dir)
    report.figures += figs.accuracy_vs_cost(agg, metric, fig_dir, "flops")
    report.figures += figs.accuracy_vs_cost(agg, metric, fig_dir, "params")
    report.figures += figs.warmup_comparison(agg, metric, fig_dir)
    if chosen is not None and not report.density.empty:
        report.figures += figs.layer_density(report.density, chosen, fig_dir)
    for key, matrix in report.overlap.items():
        report.figures += figs.overlap_heatmap(
            matrix, chosen, f"{key[0]} / {key[1]}, warmup {key[2]}: mask IoU at sparsity {chosen:g}", fig_dir,
            figs.figure_stem("overlap", *key[:2], f"warmup{key[2]}", f"s{chosen:g}"))
    if not report.stability.empty:
        report.figures += figs.stability(report.stability, fig_dir)


def _differences_text(grouping: Grouping) -> str:
    lines = []
    if grouping.global_differences:
        lines.append("Fields that differ between groups (never averaged together):")
        for k, values in grouping.global_differences.items():
            lines.append(f"- `{k}`: {', '.join(map(str, values))}")
    for key, diff in grouping.row_differences.items():
        lines.append(f"- row {'/'.join(map(str, key))} split into variants by: {', '.join(f'`{k}`' for k in diff)}")
    return "\n" + "\n".join(lines) if lines else ""


CONNECTIVITY_NOTE = ("`s_eff`: effective sparsity, mean ± std over seeds (kept weights cut off from the input or the "
                     "output counted as removed; results.json `effective_sparsity`); `collapsed`: mean number of "
                     "layers whose mask is empty (results.json `layer_collapse`), runs with one / runs, and the "
                     "layers; `failed (k)`: k runs of the cell failed (reasons under \"Runs to redo\"). "
                     "Also table_connectivity.md.")


def failed_runs(runset: RunSet, grouping: Grouping) -> pd.DataFrame:
    """The failed runs (status ``failed``) with their table keys and variant (empty when their group never
    completed)."""
    runs = runset.runs
    failed = runs[runs["status"] == "failed"]
    return failed.assign(variant=failed["group"].map(lambda g: grouping.variant.get(g, "")))


def render_page(report: Report, runset: RunSet, table_md: str) -> str:
    """The ``report.md`` page."""
    scale = metric_scale(report.metric)
    parts = [f"# Report: {runset.root}", "",
             f"Metric `{report.metric}`{' in %' if scale == 100 else ''}: mean ± std (n seeds), sample std; "
             "**bold** = best criterion per sparsity within a dataset/model; the dense row repeats its value in "
             "every column.", "", table_md, _differences_text(report.grouping), ""]
    if report.reference is not None:
        parts += ["## Published numbers beside ours", "", "Difference = ours − published; *within* = |difference| "
                  "<= the published std.", "", to_markdown(report.reference), "", summary_line(report.reference), ""]
    if not report.connectivity.empty:
        parts += ["## Effective sparsity and collapsed layers", "", CONNECTIVITY_NOTE, "",
                  to_markdown(report.connectivity), ""]
    costs = cost_table(report.aggregated)
    if not costs.empty:
        parts += ["## Cost per forward pass", "", "Mean over seeds of one example's effective parameters and FLOPs "
                  "(2 per multiply-add; unstructured masks: kept weights; results.json, costs.json).", "",
                  to_markdown(costs.set_index([c for c in costs.columns if c in ("dataset", "model", "criterion")])),
                  ""]
    parts += ["## Runs to redo", ""]
    if report.issues.empty:
        parts.append("None: every run folder completed (and every config of the sweep folder, if given, has a run).")
    else:
        parts.append(to_markdown(report.issues.fillna("").set_index("status")))
        parts.append("\nRerun with `python main.py run $(cat rerun.txt)` (same results root).")
    if not report.stability.empty:
        parts += ["", "## Stability of stochastic criteria (mask IoU across estimator seeds)", "",
                  to_markdown(report.stability.set_index(["dataset", "model", "warmup", "criterion"]).round(4))]
    for key, matrix in report.overlap.items():
        parts += ["", f"## Mask overlap {key[0]} / {key[1]}, warmup {key[2]}, at sparsity {report.sparsity:g} "
                      f"(chance {chance_iou(report.sparsity):.3f})", "", to_markdown(matrix.round(3))]
    pngs = [p for p in report.figures if p.suffix == ".png"]
    if pngs:
        parts += ["", "## Figures", ""]
        parts += [f"![{p.stem}](figures/{p.name})" for p in pngs]
    return "\n".join(parts) + "\n"


def _none(value: Any) -> Any:
    """NaN (pandas' missing value) -> None."""
    return None if isinstance(value, float) and math.isnan(value) else value
