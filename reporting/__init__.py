"""Reporting: read run folders (never train) into tables, CSVs, LaTeX and figures.

    python main.py report results/ --out reports/NAME --metric best_val_test_acc --sweep exp_configs/my_grid

:mod:`reporting.runs` reads folders, :mod:`reporting.aggregate` groups and averages over seeds,
:mod:`reporting.masks` computes mask overlaps, :mod:`reporting.figures` draws, :mod:`reporting.render`
writes Markdown/LaTeX and :mod:`reporting.report` puts it together.
"""

from reporting.aggregate import aggregate, format_cell, pivot_table
from reporting.masks import chance_iou, mask_iou
from reporting.report import Report, UnknownMetric, build_report, collect_issues
from reporting.runs import RunSet, load_runs

__all__ = ["Report", "RunSet", "UnknownMetric", "aggregate", "build_report", "chance_iou", "collect_issues",
           "format_cell", "load_runs", "mask_iou", "pivot_table"]
