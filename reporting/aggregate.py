"""Aggregate completed runs over seeds and lay them out as the paper-style table.

Rows are (dataset, model, criterion, warmup) plus a *variant* label, columns are sparsities, cells
are ``mean ± std (n)`` over seeds (sample std, ddof=1; ``–`` when n = 1), followed by the mean effective
sparsity of the group's runs where they recorded one (``[s_eff 0.9123]``; Vysogorets & Kempe 2023, see
docs/run-folder.md).  A column is labelled in the form its configs gave the sparsity in
(``training.compressor.sparsity_form``): ``s=0.9``, ``d=0.1`` (density) or ``c=10`` (compression), and so
is the effective value (``d_eff``, ``c_eff``).  Runs are averaged only
when their resolved configs are identical apart from the seed (same ``group``); when groups that
would share a cell differ in other fields, each gets its own row whose variant names those fields.
:func:`connectivity_table` lays out the effective sparsity (mean ± std) and the collapsed layers
(results.json ``layer_collapse``) of each group the same way, with the failed runs of each cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from reporting.runs import OPTIONS_SEED, OPTIONS_SEED_FIELD, SEED, RunSet, comparable_fields, group_hash, is_dense

ROW_KEYS = ["dataset", "model", "criterion", "warmup"]
# fields shown as rows / columns of the table (and the seed, which is averaged over)
DISPLAY_FIELDS = ("dataset.class", "model.class", "training.compressor.class", "training.compressor.warmup",
                  "training.compressor.sparsity")
OPTIONS_PREFIX = "training.compressor.options"
# cost of one forward pass (results.json, compressors.costs): averaged per group beside the metric
COST_COLUMNS = ("params_dense", "params_effective", "flops_dense", "flops_effective")
# direct and effective sparsity (results.json): averaged per group beside the metric
SPARSITY_COLUMNS = ("achieved_sparsity", "effective_sparsity")
# collapsed layers (results.json layer_collapse) and the spread of effective_sparsity, per group; the
# connectivity table (connectivity_table, the report's table_connectivity.md) shows them
CONNECTIVITY_COLUMNS = ("collapsed_layers", "collapsed_runs", "collapsed_layer_names", "effective_sparsity_std")
FORM_PATH = ("training", "compressor", "sparsity_form")


def sparsity_label(sparsity: float, form: str, suffix: str = "=", spec: str = "g") -> str:
    """A sparsity written in ``form``: ``s=0.9``, ``d=0.1`` (density = 1 - s) or ``c=10`` (compression =
    1 / density); ``suffix`` follows the letter (``"_eff "`` for the effective value), ``spec`` formats."""
    if form == "density":
        return f"d{suffix}{1.0 - sparsity:{spec}}"
    if form == "compression":
        return f"c{suffix}{1.0 / (1.0 - sparsity):{spec}}" if sparsity < 1.0 else f"c{suffix}inf"
    return f"s{suffix}{sparsity:{spec}}"


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss")


def _short(path: str) -> str:
    return path[len("training."):] if path.startswith("training.") else path


def _fmt_value(value: Any) -> str:
    return "null" if value is None else str(value)


def setting_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The config fields that are neither displayed (row/column keys) nor the seed nor hash-excluded."""
    return {k: v for k, v in comparable_fields(config).items() if k not in DISPLAY_FIELDS}


def differing_fields(settings: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Fields whose value is not the same in every dict (a missing key counts as a value)."""
    keys = sorted(set().union(*settings)) if settings else []
    out: dict[str, list[Any]] = {}
    for k in keys:
        values = []
        for s in settings:
            v = s.get(k, "<absent>")
            if v not in values:
                values.append(v)
        if len(values) > 1:
            out[k] = sorted(values, key=lambda v: (v is None, isinstance(v, str), v if not isinstance(v, str)
                                                   and v is not None else str(v)))
    return out


@dataclass
class Grouping:
    """Variant label per group and the fields that differ between groups of the whole report."""

    variant: dict[str, str] = field(default_factory=dict)
    global_differences: dict[str, list[Any]] = field(default_factory=dict)
    row_differences: dict[tuple, dict[str, list[Any]]] = field(default_factory=dict)


def assign_variants(runset: RunSet, runs: pd.DataFrame) -> Grouping:
    """Split rows whose groups differ in fields other than the row/column keys; name those fields."""
    out = Grouping()
    first_dir = runs.groupby("group")["run_dir"].first()
    settings = {g: setting_fields(runset.configs[d]) for g, d in first_dir.items()}
    global_settings = [{k: v for k, v in s.items() if not k.startswith(OPTIONS_PREFIX)} for s in settings.values()]
    out.global_differences = differing_fields(global_settings)
    for key, part in runs.groupby(ROW_KEYS, dropna=False, sort=True):
        groups = list(dict.fromkeys(part["group"]))
        distinct: list[dict[str, Any]] = []
        for g in groups:
            if settings[g] not in distinct:
                distinct.append(settings[g])
        if len(distinct) == 1:
            for g in groups:
                out.variant[g] = ""
            continue
        diff = differing_fields(distinct)
        out.row_differences[tuple(key)] = diff
        for g in groups:
            out.variant[g] = ", ".join(f"{_short(k)}={_fmt_value(settings[g].get(k, '<absent>'))}"
                                       for k in diff)
    return out


def aggregate(runset: RunSet, metric: str) -> tuple[pd.DataFrame, Grouping]:
    """One row per group: keys, variant, sparsity, mean, std, n, seeds, best (per dataset/model/sparsity)."""
    runs = runset.completed()
    if metric not in runs.columns:
        runs = runs.iloc[0:0]
    runs = runs[runs[metric].notna()] if len(runs) else runs
    cols = ROW_KEYS + ["variant", "sparsity", "group", "metric", "mean", "std", "n", "seeds", "dense", "best"]
    if runs.empty:
        return pd.DataFrame(columns=cols), Grouping()
    grouping = assign_variants(runset, runs)
    forms = {d: _form(runset.configs.get(d)) for d in runs["run_dir"]}
    runs = runs.assign(variant=runs["group"].map(grouping.variant), sparsity_form=runs["run_dir"].map(forms))
    costs = [c for c in COST_COLUMNS if c in runs.columns]  # runs of versions before cost accounting lack them
    costs += [c for c in SPARSITY_COLUMNS if c in runs.columns]  # older runs lack effective_sparsity
    runs, connectivity = _with_collapse(runset, runs)
    agg = (runs.groupby(ROW_KEYS + ["variant", "sparsity", "group"], dropna=False, sort=True)
           .agg(mean=(metric, "mean"), std=(metric, "std"), n=(metric, "size"),
                seeds=("seed", lambda s: ",".join(str(int(x)) for x in sorted(s))),
                sparsity_form=("sparsity_form", "first"), **{c: (c, "mean") for c in costs}, **connectivity)
           .reset_index())
    agg["metric"] = metric
    agg["dense"] = agg["criterion"].map(is_dense)
    agg["best"] = False
    for _, part in agg[~agg["dense"]].groupby(["dataset", "model", "sparsity"]):
        target = part["mean"].min() if lower_is_better(metric) else part["mean"].max()
        agg.loc[part.index[(part["mean"] - target).abs() <= 1e-12], "best"] = True
    return agg[cols + ["sparsity_form"] + costs + list(connectivity)], grouping


def _with_collapse(runset: RunSet, runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[str, Any]]]:
    """``runs`` with each run's ``collapsed_layers`` (the number of layers its mask empties: results.json
    ``layer_collapse``) and ``collapsed_names``, and the per-group aggregations of :data:`CONNECTIVITY_COLUMNS`
    (none when no run recorded ``layer_collapse``)."""
    lists = {d: (runset.results.get(d) or {}).get("layer_collapse") for d in runs["run_dir"]}
    lists = {d: [str(x) for x in v] if isinstance(v, list) else None for d, v in lists.items()}
    if all(v is None for v in lists.values()):
        return runs, {}
    runs = runs.assign(collapsed_layers=runs["run_dir"].map(lambda d: math.nan if lists[d] is None else len(lists[d])),
                       collapsed_names=runs["run_dir"].map(lambda d: lists[d] or []))
    out: dict[str, tuple[str, Any]] = {
        "collapsed_layers": ("collapsed_layers", "mean"),
        "collapsed_runs": ("collapsed_layers", lambda c: int((c > 0).sum())),
        "collapsed_layer_names": ("collapsed_names", lambda v: " ".join(sorted({n for names in v for n in names}))),
    }
    if "effective_sparsity" in runs.columns:
        out["effective_sparsity_std"] = ("effective_sparsity", "std")
    return runs, out


def connectivity_table(agg: pd.DataFrame, failed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Effective sparsity and collapsed layers of the pruned groups, laid out as :func:`pivot_table`.

    Index (dataset, model, criterion, warmup[, variant]); two columns per sparsity, labelled as the main
    table's: ``<label> s_eff``, the mean ± std over seeds of results.json ``effective_sparsity`` (Vysogorets &
    Kempe 2023: kept weights cut off from the input or the output counted as removed; always a sparsity), and
    ``<label> collapsed``, the mean number of layers whose mask is empty (results.json ``layer_collapse``), the
    runs with at least one (``k/n``) and the layers' names, ``0`` when none.  ``failed`` (rows of the runs
    table: dataset, model, criterion, warmup, sparsity, variant) adds ``k failed`` to its cells, and fills the
    cells of settings where no run completed with ``failed (k)``.  Empty when no run recorded either value.
    """
    cols = [c for c in ("effective_sparsity", "collapsed_layers") if c in agg.columns]
    pruned = agg[~agg["dense"]] if not agg.empty else agg
    if pruned.empty or not cols or pruned[cols].isna().all().all():
        return pd.DataFrame()
    sparsities = sorted(pruned["sparsity"].unique())
    labels = dict(zip(sparsities, _column_labels(pruned, sparsities)))
    keys = ROW_KEYS + ["variant"]
    fails: dict[tuple, int] = {}
    for _, r in (failed if failed is not None else pd.DataFrame()).iterrows():
        if r.get("sparsity") is None or is_dense(r.get("criterion")):
            continue
        s = next((x for x in sparsities if math.isclose(x, float(r["sparsity"]))), float(r["sparsity"]))
        key = (*(r.get(k, "") for k in keys), s)
        fails[key] = fails.get(key, 0) + 1
    for s in {k[-1] for k in fails} - set(sparsities):
        sparsities.append(s)
        labels[s] = sparsity_label(s, "sparsity")
    sparsities.sort()
    rows: dict[tuple, dict[str, Any]] = {}
    for _, r in pruned.iterrows():
        key = tuple(r[k] for k in keys)
        row = rows.setdefault(key, dict(zip(keys, key)))
        k = fails.pop((*key, r["sparsity"]), 0)
        extra = f"; {k} failed" if k else ""
        row[f"{labels[r['sparsity']]} s_eff"] = _mean_std(r.get("effective_sparsity"),
                                                          r.get("effective_sparsity_std"), int(r["n"])) + extra
        row[f"{labels[r['sparsity']]} collapsed"] = _collapsed_cell(r) + extra
    for (*key, s), k in fails.items():
        row = rows.setdefault(tuple(key), dict(zip(keys, key)))
        row[f"{labels[s]} s_eff"] = row[f"{labels[s]} collapsed"] = f"failed ({k})"
    columns = [f"{labels[s]} {part}" for s in sparsities for part in ("s_eff", "collapsed")]
    table = pd.DataFrame(list(rows.values()))
    table = table.reindex(columns=keys + columns).fillna("")
    table = table.sort_values(keys, key=lambda s: s.map(str)).reset_index(drop=True)
    if (table["variant"] == "").all():
        table = table.drop(columns="variant")
    return table.set_index([c for c in keys if c in table.columns])


def _mean_std(mean: Any, std: Any, n: int) -> str:
    """``0.9912 ± 0.0004``; ``–`` for the std of one run; empty when no run recorded the value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    sd = "–" if n < 2 or std is None or (isinstance(std, float) and math.isnan(std)) else f"{std:.4f}"
    return f"{mean:.4f} ± {sd}"


def _collapsed_cell(r: pd.Series) -> str:
    """``0``, or ``1.33 (2/3): 3.weight 7.weight`` (mean layers, runs with a collapse / runs, their names)."""
    mean = r.get("collapsed_layers")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if not r.get("collapsed_runs"):
        return "0"
    return f"{mean:.3g} ({int(r['collapsed_runs'])}/{int(r['n'])}): {r.get('collapsed_layer_names', '')}"


def _form(config: dict[str, Any] | None) -> str:
    """The sparsity form a run's config gave (``sparsity`` for configs of versions before the forms)."""
    node: Any = config
    for key in FORM_PATH:
        node = node.get(key) if isinstance(node, dict) else None
    return node if node in ("density", "compression") else "sparsity"


def cost_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Mean effective parameters and FLOPs of one forward pass per group (rows with a recorded cost), and
    their share of the dense network's; empty when no run recorded its cost."""
    if agg.empty or "flops_effective" not in agg.columns or agg["flops_effective"].isna().all():
        return pd.DataFrame()
    part = agg[agg["flops_effective"].notna()].sort_values(ROW_KEYS + ["variant", "sparsity"],
                                                           key=lambda s: s.map(str) if s.dtype == object else s)
    out = part[ROW_KEYS + ["variant", "sparsity"]].copy()
    out["criterion"] = [("dense" if d else c) for d, c in zip(part["dense"], part["criterion"])]
    out["params"] = part["params_effective"].round().astype("int64")
    out["params_%_dense"] = (100 * part["params_effective"] / part["params_dense"]).round(2)
    out["flops"] = part["flops_effective"].round().astype("int64")
    out["flops_%_dense"] = (100 * part["flops_effective"] / part["flops_dense"]).round(2)
    if (out["variant"] == "").all():
        out = out.drop(columns="variant")
    return out.reset_index(drop=True)


def format_cell(mean: float, std: float, n: int, scale: float) -> str:
    """``"97.78 ± 0.31 (3)"``; ``–`` replaces the std of a single run."""
    sd = "–" if n < 2 or std is None or (isinstance(std, float) and math.isnan(std)) else f"{std * scale:.2f}"
    return f"{mean * scale:.2f} ± {sd} ({n})"


def metric_scale(metric: str) -> float:
    """Accuracy-like metrics are shown in percent, losses as they are."""
    return 1.0 if lower_is_better(metric) else 100.0


def pivot_table(agg: pd.DataFrame, *, bold: tuple[str, str] = ("**", "**"),
                metric: str = "best_val_test_acc") -> pd.DataFrame:
    """Display table: index (dataset, model, criterion, warmup, variant), columns ``s=<sparsity>``.

    The dense baseline row repeats its value in every sparsity column of its dataset/model block (it is
    the reference each column is read against) and is never marked best.
    """
    if agg.empty:
        return pd.DataFrame()
    scale = metric_scale(metric)
    sparsities = sorted(agg.loc[~agg["dense"], "sparsity"].unique()) or [0.0]
    columns = _column_labels(agg, sparsities)
    records = []
    for key, part in agg.groupby(ROW_KEYS + ["variant"], dropna=False, sort=False):
        dense = bool(part["dense"].iloc[0])
        row: dict[str, Any] = dict(zip(ROW_KEYS + ["variant"], key))
        row["criterion"] = "dense" if dense else row["criterion"]
        for s, col in zip(sparsities, columns):
            hit = part if dense else part[part["sparsity"] == s]
            if hit.empty:
                row[col] = ""
                continue
            r = hit.iloc[0]
            text = format_cell(r["mean"], r["std"], int(r["n"]), scale)
            text = f"{bold[0]}{text}{bold[1]}" if r["best"] else text
            eff = r.get("effective_sparsity")
            if not dense and eff is not None and not math.isnan(eff):
                text += f" [{sparsity_label(float(eff), r.get('sparsity_form') or 'sparsity', '_eff ', '.4g')}]"
            row[col] = text
        row["_order"] = (key[0], key[1], 0 if dense else 1, str(key[2]), key[3], key[4])
        records.append(row)
    table = pd.DataFrame(records).sort_values("_order", key=lambda s: s.map(_sortable)).drop(columns="_order")
    if (table["variant"] == "").all():
        table = table.drop(columns="variant")
    return table.set_index([c for c in ROW_KEYS + ["variant"] if c in table.columns])


def _column_labels(agg: pd.DataFrame, sparsities: list[float]) -> list[str]:
    """The column label of each sparsity, in the form its pruned configs gave (``s=0.9``, ``d=0.1``, ``c=10``);
    as sparsities when the forms are mixed or two sparsities would print alike."""
    pruned = agg[~agg["dense"]]
    forms = {s: set(pruned.loc[pruned["sparsity"] == s, "sparsity_form"]) if "sparsity_form" in agg else set()
             for s in sparsities}
    columns = [sparsity_label(s, next(iter(forms[s])) if len(forms[s]) == 1 else "sparsity") for s in sparsities]
    if len(set(columns)) < len(columns):  # two sparsities that print alike in their forms: as sparsities
        columns = [f"s={s:g}" for s in sparsities]
    return columns


def _sortable(order: tuple) -> tuple:
    return tuple((0, v) if isinstance(v, (int, float)) else (1, str(v)) for v in order)


def options_seed_groups(runset: RunSet) -> dict[str, list[str]]:
    """Completed runs that differ only in ``training.compressor.options.seed`` (>= 2 distinct seeds)."""
    runs = runset.completed()
    runs = runs[runs["options_seed"].notna()] if "options_seed" in runs.columns else runs.iloc[0:0]
    buckets: dict[str, list[str]] = {}
    for run_dir in runs["run_dir"]:
        cfg = runset.configs.get(run_dir)
        if cfg is None:
            continue
        key = group_hash(cfg, without=(SEED, OPTIONS_SEED)) + f"-seed{cfg.get('general', {}).get('seed')}"
        buckets.setdefault(key, []).append(run_dir)
    out = {}
    for key, dirs in buckets.items():
        seeds = {runs.loc[runs["run_dir"] == d, "options_seed"].iloc[0] for d in dirs}
        if len(seeds) >= 2:
            out[key] = sorted(dirs)
    return out


__all__ = ["ROW_KEYS", "COST_COLUMNS", "SPARSITY_COLUMNS", "CONNECTIVITY_COLUMNS", "connectivity_table",
           "cost_table", "sparsity_label",
           "DISPLAY_FIELDS", "OPTIONS_SEED_FIELD", "Grouping", "aggregate", "assign_variants",
           "differing_fields", "format_cell", "pivot_table", "options_seed_groups", "setting_fields",
           "metric_scale", "lower_is_better"]
