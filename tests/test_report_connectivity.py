"""The report's connectivity table: effective sparsity (mean ± std) and collapsed layers per cell, failed runs.

Hand-made run folders (tests/test_report.py's ``make_run``) with known ``layer_collapse`` and
``effective_sparsity`` values, and one real digits run whose results.json the table must reproduce.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_report import cell, make_run

import main
from reporting import aggregate, build_report, load_runs
from reporting.aggregate import connectivity_table, pivot_table
from reporting.report import failed_runs

METRIC = "best_val_test_acc"


def run_with(root: Path, collapse: list[str] | None, effective: float | None, **kw: Any) -> Path:
    """A completed run whose results.json also holds ``layer_collapse`` / ``effective_sparsity`` (None: absent)."""
    path = make_run(root, acc=kw.pop("acc", 0.9), **kw)
    results = json.loads((path / "results.json").read_text())
    if collapse is not None:
        results["layer_collapse"] = collapse
    if effective is not None:
        results["effective_sparsity"] = effective
    (path / "results.json").write_text(json.dumps(results))
    return path


def report_of(root: Path) -> Any:
    return build_report(root, root / "rep", figures=False, progress=False, log=lambda s: None)


def test_groups_average_collapsed_layers_and_effective_sparsity(tmp_path):
    run_with(tmp_path, [], 0.91, seed=0)
    run_with(tmp_path, ["fc.weight"], 0.93, seed=1)
    run_with(tmp_path, ["fc.weight", "conv.weight"], 0.95, seed=2)
    for seed in (0, 1):
        run_with(tmp_path, [], 0.5, criterion="random", sparsity=0.5, seed=seed)
    agg, _ = aggregate(load_runs(tmp_path, progress=False), METRIC)
    snip = cell(agg, criterion="snip")
    assert snip["collapsed_layers"] == pytest.approx(1.0)  # (0 + 1 + 2) / 3
    assert snip["collapsed_runs"] == 2
    assert snip["collapsed_layer_names"] == "conv.weight fc.weight"
    assert snip["effective_sparsity"] == pytest.approx(0.93)
    assert snip["effective_sparsity_std"] == pytest.approx(0.02)  # sample std (ddof=1), as the metric's
    random = cell(agg, criterion="random")
    assert random["collapsed_layers"] == 0 and random["collapsed_runs"] == 0 and random["collapsed_layer_names"] == ""


def test_the_table_has_two_columns_per_sparsity_labelled_as_the_main_table(tmp_path):
    run_with(tmp_path, [], 0.91, seed=0)
    run_with(tmp_path, ["fc.weight"], 0.93, seed=1)
    run_with(tmp_path, ["fc.weight", "conv.weight"], 0.95, seed=2)
    run_with(tmp_path, [], 0.5, criterion="random", sparsity=0.5, seed=0)
    make_run(tmp_path, criterion="none", acc=0.99, seed=0)  # the dense baseline has no row here
    agg, _ = aggregate(load_runs(tmp_path, progress=False), METRIC)
    table = connectivity_table(agg)
    labels = list(pivot_table(agg, metric=METRIC).columns)
    assert labels == ["s=0.5", "s=0.9"]
    assert list(table.columns) == ["s=0.5 s_eff", "s=0.5 collapsed", "s=0.9 s_eff", "s=0.9 collapsed"]
    assert list(table.index.names) == ["dataset", "model", "criterion", "warmup"]
    rows = table.reset_index().set_index("criterion")
    assert list(rows.index) == ["random", "snip"]
    assert rows.loc["snip", "s=0.9 s_eff"] == "0.9300 ± 0.0200"
    assert rows.loc["snip", "s=0.9 collapsed"] == "1 (2/3): conv.weight fc.weight"
    assert rows.loc["random", "s=0.5 s_eff"] == "0.5000 ± –"  # one run: no std
    assert rows.loc["random", "s=0.5 collapsed"] == "0"
    assert rows.loc["random", "s=0.9 s_eff"] == "" and rows.loc["snip", "s=0.5 collapsed"] == ""


def test_failed_runs_are_counted_in_their_cell_or_fill_it(tmp_path):
    for seed in (0, 1):
        run_with(tmp_path, [], 0.92, seed=seed)
    make_run(tmp_path, status="failed", seed=2)                              # beside two completed runs
    make_run(tmp_path, status="failed", criterion="random", sparsity=0.99, seed=0)  # no run of the cell completed
    make_run(tmp_path, status="failed", criterion="random", sparsity=0.99, seed=1)
    make_run(tmp_path, status="failed", criterion="none", seed=0)             # dense: not in this table
    make_run(tmp_path, status="interrupted", seed=3)                          # not failed: not counted
    report = report_of(tmp_path)
    rows = report.connectivity.reset_index().set_index("criterion")
    assert list(report.connectivity.columns) == ["s=0.9 s_eff", "s=0.9 collapsed", "s=0.99 s_eff", "s=0.99 collapsed"]
    assert rows.loc["snip", "s=0.9 s_eff"] == "0.9200 ± 0.0000; 1 failed"
    assert rows.loc["snip", "s=0.9 collapsed"] == "0; 1 failed"
    assert rows.loc["random", "s=0.99 s_eff"] == rows.loc["random", "s=0.99 collapsed"] == "failed (2)"
    assert rows.loc["random", "s=0.9 s_eff"] == "" and rows.loc["snip", "s=0.99 s_eff"] == ""
    assert set(failed_runs(load_runs(tmp_path, progress=False), report.grouping)["status"]) == {"failed"}
    written = (tmp_path / "rep" / "table_connectivity.md").read_text()
    assert "| digits | digits_cnn | random | 0 |  |  | failed (2) | failed (2) |" in written
    assert "## Effective sparsity and collapsed layers" in report.markdown
    assert "failed (2)" in report.markdown
    issues = pd.read_csv(tmp_path / "rep" / "issues.csv")  # the reasons stay listed where they always were
    assert (issues["status"] == "failed").sum() == 4


def test_runs_of_versions_without_the_values_write_no_table(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, acc=0.9, seed=seed)  # results.json without layer_collapse / effective_sparsity
    report = report_of(tmp_path)
    assert report.connectivity.empty
    assert "collapsed_layers" not in report.aggregated.columns
    assert not (tmp_path / "rep" / "table_connectivity.md").exists()
    assert "Effective sparsity and collapsed layers" not in report.markdown
    assert (tmp_path / "rep" / "table.md").exists()


def test_only_effective_sparsity_or_only_collapse_recorded(tmp_path):
    run_with(tmp_path, None, 0.95, seed=0)
    run_with(tmp_path, ["conv.weight"], None, criterion="random", seed=0)
    rows = report_of(tmp_path).connectivity.reset_index().set_index("criterion")
    assert rows.loc["snip", "s=0.9 s_eff"] == "0.9500 ± –" and rows.loc["snip", "s=0.9 collapsed"] == ""
    assert rows.loc["random", "s=0.9 s_eff"] == "" and rows.loc["random", "s=0.9 collapsed"] == "1 (1/1): conv.weight"


def test_a_real_run_is_reported_as_its_results_json_says(tmp_path):
    """Magnitude at initialisation empties layers of the digits CNN at 99% (docs/sweeps-and-reports.md)."""
    cfg = json.loads(Path("exp_configs/digits_grid/base.json").read_text())
    cfg["training"].update(num_steps=1, max_batches=1)
    cfg["training"]["compressor"].update({"class": "magnitude", "sparsity": 0.99, "warmup": 0})
    config = tmp_path / "magnitude.json"
    config.write_text(json.dumps(cfg))
    assert main.main(["run", str(config), "--results", str(tmp_path / "res")]) == 0
    (results_file,) = (tmp_path / "res").rglob("results.json")
    results = json.loads(results_file.read_text())
    collapsed = results["layer_collapse"]
    assert collapsed  # the case the table is for
    assert main.main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    agg = pd.read_csv(tmp_path / "rep" / "aggregated.csv")
    assert agg.loc[0, "collapsed_layers"] == len(collapsed)
    assert agg.loc[0, "effective_sparsity"] == pytest.approx(results["effective_sparsity"])
    assert math.isnan(agg.loc[0, "effective_sparsity_std"])
    table = (tmp_path / "rep" / "table_connectivity.md").read_text()
    expected = (f"| digits | digits_cnn | magnitude | 0 | {results['effective_sparsity']:.4f} ± – | "
                f"{len(collapsed)} (1/1): {' '.join(sorted(collapsed))} |")
    assert expected in table
