"""Reporting on hand-made run folders: aggregation values, grouping, issues, mask IoU, outputs."""

from __future__ import annotations

import builtins
import copy
import errno
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import main
from reporting import aggregate, build_report, chance_iou, collect_issues, format_cell, load_runs, mask_iou
from reporting.report import overlap_matrices, stability_frame
from runspec import RunSpec
from utils.io import save_torch

BASE: dict[str, Any] = {
    "general": {"experiment": "pbt", "seed": 0},
    "dataset": {"class": "digits", "batch_size": 64},
    "model": {"class": "digits_cnn"},
    "training": {"num_steps": 2, "optimizer": {"class": "sgd", "learning_rate": 0.05},
                 "compressor": {"class": "snip", "sparsity": 0.9, "warmup": 0}},
}
LAYERS = {"conv.weight": (4, 5), "fc.weight": (10,)}


def resolved(criterion: str = "snip", sparsity: float = 0.9, seed: int = 0, warmup: int = 0, lr: float = 0.05,
             options: dict | None = None) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    comp = data["training"]["compressor"]
    comp.update({"class": criterion, "sparsity": sparsity, "warmup": warmup, "options": options or {}})
    data["general"]["seed"] = seed
    data["training"]["optimizer"]["learning_rate"] = lr
    return RunSpec.from_dict(data).to_dict()


def make_run(root: Path, *, acc: float | None = None, status: str = "completed", mask: dict | None = None,
             config_file: str | None = None, density: dict | None = None, **kw: Any) -> Path:
    """Write config.json, status.json and (if completed) results.json / mask.pt like the runner does."""
    cfg = resolved(**kw)
    path = RunSpec.from_dict(cfg).run_dir(root)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    st = {"status": status, "config_file": config_file}
    if status != "completed":
        st["reason"] = f"{status} on purpose"
    (path / "status.json").write_text(json.dumps(st))
    if status == "completed":
        res = {"final_test_acc": acc - 0.01, "best_val_test_acc": acc,
               "layer_density": density or {"conv.weight": 0.2, "fc.weight": 0.05}}
        (path / "results.json").write_text(json.dumps(res))
    if mask is not None:
        save_torch(path / "mask.pt", mask)
    return path


def cell(agg: pd.DataFrame, **where: Any) -> pd.Series:
    hit = agg
    for k, v in where.items():
        hit = hit[hit[k] == v]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_mean_std_count_over_seeds(tmp_path):
    for seed, acc in zip((0, 1, 2), (0.90, 0.92, 0.94)):
        make_run(tmp_path, criterion="snip", seed=seed, acc=acc)
    make_run(tmp_path, criterion="snip", sparsity=0.5, seed=0, acc=0.97)
    agg, grouping = aggregate(load_runs(tmp_path, progress=False), "best_val_test_acc")
    row = cell(agg, sparsity=0.9)
    assert row["mean"] == pytest.approx(0.92)
    assert row["std"] == pytest.approx(0.02)  # sample std (ddof=1)
    assert row["n"] == 3 and row["seeds"] == "0,1,2"
    single = cell(agg, sparsity=0.5)
    assert single["n"] == 1 and math.isnan(single["std"])
    assert format_cell(row["mean"], row["std"], 3, 100) == "92.00 ± 2.00 (3)"
    assert format_cell(0.97, float("nan"), 1, 100) == "97.00 ± – (1)"
    final = cell(aggregate(load_runs(tmp_path, progress=False), "final_test_acc")[0], sparsity=0.9)
    assert final["mean"] == pytest.approx(0.91)
    assert grouping.global_differences == {}


def test_different_settings_are_never_averaged(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, seed=seed, lr=0.05, acc=0.90)
        make_run(tmp_path, seed=seed, lr=0.1, acc=0.80)
    runset = load_runs(tmp_path, progress=False)
    agg, grouping = aggregate(runset, "best_val_test_acc")
    assert len(agg) == 2 and list(agg["n"]) == [2, 2]
    assert sorted(agg["mean"]) == pytest.approx([0.80, 0.90])
    assert sorted(agg["variant"]) == ["optimizer.learning_rate=0.05", "optimizer.learning_rate=0.1"]
    assert grouping.global_differences == {"training.optimizer.learning_rate": [0.05, 0.1]}
    report = build_report(tmp_path, tmp_path / "rep", figures=False, progress=False, log=lambda s: None)
    assert "training.optimizer.learning_rate" in report.markdown
    assert len(report.table) == 2


def test_dense_row_and_best_cell(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, criterion="none", seed=seed, acc=0.99)
        make_run(tmp_path, criterion="snip", seed=seed, acc=0.95)
        make_run(tmp_path, criterion="random", seed=seed, acc=0.90 + seed * 0.02)
        make_run(tmp_path, criterion="snip", sparsity=0.5, seed=seed, acc=0.96)
        make_run(tmp_path, criterion="random", sparsity=0.5, seed=seed, acc=0.97)
    agg, _ = aggregate(load_runs(tmp_path, progress=False), "best_val_test_acc")
    assert set(agg.loc[agg["best"], ["criterion", "sparsity"]].itertuples(index=False)) == {("snip", 0.9),
                                                                                           ("random", 0.5)}
    dense = cell(agg, criterion="none")
    assert dense["dense"] and not dense["best"] and dense["sparsity"] == 0.0
    report = build_report(tmp_path, tmp_path / "rep", figures=False, progress=False, log=lambda s: None)
    table = report.table.reset_index()
    assert list(table["criterion"]) == ["dense", "random", "snip"]
    assert list(table.columns[-2:]) == ["s=0.5", "s=0.9"]
    assert table.iloc[0]["s=0.5"] == table.iloc[0]["s=0.9"] == "99.00 ± 0.00 (2)"
    assert table.iloc[2]["s=0.9"] == "**95.00 ± 0.00 (2)**"
    assert table.iloc[1]["s=0.9"] == "91.00 ± 1.41 (2)"
    md = (tmp_path / "rep" / "table.md").read_text()
    assert "| digits | digits_cnn | snip | 0 | 96.00 ± 0.00 (2) | **95.00 ± 0.00 (2)** |" in md
    tex = (tmp_path / "rep" / "table.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{95.00 $\pm$ 0.00 (2)}" in tex and "digits\\_cnn" in tex
    runs_csv = pd.read_csv(tmp_path / "rep" / "runs.csv")
    assert len(runs_csv) == 10
    assert len(pd.read_csv(tmp_path / "rep" / "aggregated.csv")) == 5


def test_failed_interrupted_invalid_and_missing(tmp_path):
    results, sweep_dir = tmp_path / "results", tmp_path / "sweep"
    sweep_dir.mkdir()
    files = {}
    for seed in (0, 1, 2, 3):
        cfg = copy.deepcopy(BASE)
        cfg["general"]["seed"] = seed
        files[seed] = sweep_dir / f"snip_seed{seed}.json"
        files[seed].write_text(json.dumps(cfg))
    (sweep_dir / "broken.json").write_text(json.dumps({"dataset": {"class": "nope"}}))
    make_run(results, seed=0, acc=0.9, config_file=str(files[0]))
    make_run(results, seed=1, status="failed")  # no config_file in status: matched by hash
    make_run(results, seed=2, status="interrupted", config_file=str(files[2]))
    make_run(results, seed=7, status="running")  # not part of the sweep
    make_run(results, seed=3, lr=0.5, acc=0.5, config_file=str(files[3]))  # the file was edited since
    bad = results / "invalid" / "typo-1234"
    bad.mkdir(parents=True)
    (bad / "status.json").write_text(json.dumps({"status": "failed", "config_file": "typo.json",
                                                 "reason": "invalid config", "problems": ["x: unknown"]}))
    issues = collect_issues(load_runs(results, progress=False), sweep_dir)
    got = {(r.status, Path(r.config_file).name if r.config_file else None) for r in issues.itertuples()}
    assert got == {("failed", "snip_seed1.json"), ("interrupted", "snip_seed2.json"), ("running", None),
                   ("invalid", "typo.json"), ("invalid", "broken.json"), ("missing", "snip_seed3.json")}
    stale = issues[issues["status"] == "missing"].iloc[0]
    assert "different resolved config" in stale["reason"] and "seed_3-" in stale["reason"]
    report = build_report(results, tmp_path / "rep", sweep_dir=sweep_dir, figures=False, progress=False,
                          log=lambda s: None)
    assert sorted(report.aggregated["n"]) == [1, 1]
    rerun = (tmp_path / "rep" / "rerun.txt").read_text().split()
    assert sorted(Path(f).name for f in rerun) == ["snip_seed1.json", "snip_seed2.json", "snip_seed3.json"]


def _mask(bits: list[int]) -> dict[str, torch.Tensor]:
    t = torch.tensor(bits, dtype=torch.bool)
    return {"conv.weight": t[:20].reshape(4, 5), "fc.weight": t[20:]}


def test_iou_values_and_chance_level():
    a = {"w": torch.tensor([1, 1, 0, 0], dtype=torch.bool)}
    b = {"w": torch.tensor([1, 0, 1, 0], dtype=torch.bool)}
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, {"w": ~a["w"]}) == 0.0
    assert chance_iou(0.9) == pytest.approx(0.1 / 1.9)
    assert chance_iou(0.0) == 1.0
    gen = torch.Generator().manual_seed(0)
    n, keep = 400_000, 40_000  # sparsity 0.9
    x = {"w": torch.zeros(n, dtype=torch.bool)}
    y = {"w": torch.zeros(n, dtype=torch.bool)}
    x["w"][torch.randperm(n, generator=gen)[:keep]] = True
    y["w"][torch.randperm(n, generator=gen)[:keep]] = True
    assert mask_iou(x, y) == pytest.approx(chance_iou(0.9), abs=0.003)
    with pytest.raises(ValueError):
        mask_iou(a, {"w": torch.ones(3, dtype=torch.bool)})


def test_overlap_between_criteria_pairs_same_seed_only(tmp_path):
    ones = [1] * 10 + [0] * 20
    snip0 = _mask(ones)
    mag0 = _mask([1] * 5 + [0] * 5 + [1] * 5 + [0] * 15)      # IoU with snip0: 5 / 15
    snip1 = _mask([0] * 20 + [1] * 10)
    mag1 = _mask([0] * 20 + [1] * 10)                          # IoU with snip1: 1
    make_run(tmp_path, criterion="snip", seed=0, acc=0.9, mask=snip0)
    make_run(tmp_path, criterion="magnitude", seed=0, acc=0.9, mask=mag0)
    make_run(tmp_path, criterion="snip", seed=1, acc=0.9, mask=snip1)
    make_run(tmp_path, criterion="magnitude", seed=1, acc=0.9, mask=mag1)
    make_run(tmp_path, criterion="random", seed=2, acc=0.9, mask=snip0)  # no partner with seed 2
    matrices = overlap_matrices(load_runs(tmp_path, progress=False), 0.9, progress=False)
    matrix = matrices[("digits", "digits_cnn", 0)]
    assert list(matrix.index) == ["magnitude", "snip"]
    assert matrix.loc["snip", "magnitude"] == pytest.approx((1 / 3 + 1) / 2)
    assert matrix.loc["snip", "snip"] == 1.0


def test_stability_compares_only_runs_differing_in_estimator_seed(tmp_path):
    m1 = _mask([1] * 10 + [0] * 20)
    m2 = _mask([1] * 5 + [0] * 5 + [1] * 5 + [0] * 15)
    m3 = _mask([0] * 30)
    make_run(tmp_path, criterion="random", options={"seed": 1}, acc=0.9, mask=m1)
    make_run(tmp_path, criterion="random", options={"seed": 2}, acc=0.9, mask=m2)
    make_run(tmp_path, criterion="random", options={"seed": 3}, seed=5, acc=0.9, mask=m3)  # other run seed
    make_run(tmp_path, criterion="random", options={"seed": 3}, lr=0.1, acc=0.9, mask=m3)  # other lr
    stab = stability_frame(load_runs(tmp_path, progress=False))
    assert len(stab) == 1
    row = stab.iloc[0]
    assert row["criterion"] == "random" and row["pairs"] == 1
    assert row["mean"] == pytest.approx(1 / 3)
    assert row["chance"] == pytest.approx(chance_iou(0.9))


def test_report_command_writes_tables_and_figures(tmp_path, capsys):
    results = tmp_path / "results"
    for seed in (0, 1):
        make_run(results, criterion="none", seed=seed, acc=0.99)
        for warmup in (0, 1):
            for s in (0.5, 0.9):
                make_run(results, criterion="snip", sparsity=s, seed=seed, warmup=warmup, acc=0.9 + s / 20,
                         mask=_mask([1] * 3 + [0] * 27))
                make_run(results, criterion="random", sparsity=s, seed=seed, warmup=warmup, acc=0.9,
                         mask=_mask([0] * 27 + [1] * 3))
    for opt_seed in (1, 2):
        make_run(results, criterion="random", options={"seed": opt_seed}, acc=0.9, mask=_mask([opt_seed % 2] * 30))
    out = tmp_path / "rep"
    assert main.main(["report", str(results), "--out", str(out), "--sparsity", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "| digits | digits_cnn | dense |" in printed
    for name in ("report.md", "table.md", "table.tex", "runs.csv", "aggregated.csv", "issues.csv", "overlap.csv",
                 "stability.csv", "layer_density.csv"):
        assert (out / name).is_file(), name
    stems = {p.stem for p in (out / "figures").glob("*.png")}
    assert stems == {p.stem for p in (out / "figures").glob("*.pdf")}
    assert {"acc_vs_sparsity_digits_digits_cnn_warmup0", "acc_vs_sparsity_digits_digits_cnn_warmup1",
            "warmup_digits_digits_cnn", "layer_density_digits_digits_cnn_warmup0_s0.9",
            "overlap_digits_digits_cnn_warmup0_s0.9", "stability_digits_digits_cnn_warmup0"} <= stems
    overlap = pd.read_csv(out / "overlap.csv")
    # warmup 1: disjoint masks; warmup 0 also pairs snip (seed 0) with the two estimator-seed random runs:
    # IoU 3/30 with the all-ones mask, 0 with the others -> mean of (0, 0.1, 0) and (0,) = 0.025
    assert overlap.sort_values("warmup")["iou"].tolist() == pytest.approx([0.025, 0.0])
    page = (out / "report.md").read_text()
    assert "| criterion | random | snip |" in page and "| snip | 0 | 1 |" in page  # IoU matrix keeps row names
    density = pd.read_csv(out / "layer_density.csv")
    assert set(density["density"]) == {0.2, 0.05}
    (tmp_path / "empty").mkdir()
    assert main.main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "rep2")]) == 1  # no run


def test_report_on_a_missing_folder_is_an_error_and_writes_nothing(tmp_path, capsys):
    assert main.main(["report", str(tmp_path / "typo"), "--out", str(tmp_path / "rep")]) == 2
    assert "typo: no such results folder" in capsys.readouterr().err and not (tmp_path / "rep").exists()


def test_report_no_figures_writes_tables_only(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        make_run(results, criterion="snip", sparsity=0.9, seed=seed, acc=0.9, mask=_mask([1] * 3 + [0] * 27))
    out = tmp_path / "rep"
    assert main.main(["report", str(results), "--out", str(out), "--no-figures"]) == 0
    assert (out / "table.md").is_file() and (out / "runs.csv").is_file()
    assert not list(out.rglob("*.png")) and not list(out.rglob("*.pdf"))


GARBAGE = {  # file -> bytes written over a real run folder's file
    "status_not_utf8": ("status.json", b'{"status": "comp\xff\xfeleted"}'),
    "status_list": ("status.json", b'["completed"]'),
    "config_string": ("config.json", b'"just a string"'),
    "config_deep": ("config.json", b"[" * 50000 + b"]" * 50000),
    "sparsity_text": ("config.json", None),  # "sparsity": "abc"
    "results_inf": ("results.json", b'{"final_test_acc": Infinity, "best_val_test_acc": Infinity}'),
    "results_list": ("results.json", b"[0.9]"),
}


def test_garbage_run_folders_are_listed_as_issues_and_never_averaged(tmp_path):
    good = [make_run(tmp_path, seed=s, acc=0.8) for s in (0, 1)]
    folders = {}
    for i, (key, (name, content)) in enumerate(GARBAGE.items(), start=2):
        folders[key] = make_run(tmp_path, seed=i, acc=0.8)
        if content is None:
            cfg = json.loads((folders[key] / name).read_text())
            cfg["training"]["compressor"]["sparsity"] = "abc"
            content = json.dumps(cfg).encode()
        (folders[key] / name).write_bytes(content)
    report = build_report(tmp_path, tmp_path / "rep", figures=False, progress=False, log=lambda s: None)
    (row,) = report.aggregated.itertuples()
    assert row.n == 2 and row.mean == pytest.approx(0.8) and row.seeds == "0,1"  # only the two good runs
    issues = report.issues.set_index("run_dir")
    for key, folder in folders.items():
        assert issues.loc[str(folder), "status"] == "broken", key
    reasons = {key: issues.loc[str(folder), "reason"] for key, folder in folders.items()}
    assert "status.json is unreadable" in reasons["status_not_utf8"]
    assert "status.json holds list" in reasons["status_list"] and "config.json holds str" in reasons["config_string"]
    assert "config.json is unreadable (UnreadableJSON: JSON nested too deeply" in reasons["config_deep"]
    assert "training.compressor.sparsity is 'abc'" in reasons["sparsity_text"]
    assert "results.json: final_test_acc, best_val_test_acc not finite (inf)" in reasons["results_inf"]
    assert "results.json holds list" in reasons["results_list"]
    assert str(good[0]) not in issues.index


def test_a_truncated_mask_is_listed_as_an_issue_not_silently_dropped(tmp_path):
    from helpers import truncate

    config = tmp_path / "s.json"
    config.write_text("{}")
    snip = make_run(tmp_path, criterion="snip", acc=0.9, mask=_mask([1] * 10 + [0] * 20), config_file=str(config))
    make_run(tmp_path, criterion="magnitude", acc=0.9, mask=_mask([1] * 5 + [0] * 25))
    truncate(snip / "mask.pt")
    report = build_report(tmp_path, tmp_path / "rep", figures=False, progress=False, log=lambda s: None)
    (issue,) = report.issues.itertuples()
    assert issue.status == "damaged" and issue.run_dir == str(snip) and issue.config_file == str(config)
    assert "mask.pt cannot be used (left out of the mask overlap)" in issue.reason
    assert "no content digest" in issue.reason
    assert report.overlap == {} and "damaged" in (tmp_path / "rep" / "report.md").read_text()
    # a plain rerun repairs a damaged completed run from its checkpoint (or says why not): it is listed
    assert (tmp_path / "rep" / "rerun.txt").read_text() == f"{config}\n"


def test_legends_of_many_variants_stay_inside_the_figure_and_off_the_plot():
    import matplotlib.pyplot as plt

    from reporting.figures import place_legend

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i in range(40):
        ax.plot([0, 1], [i, i + 1], label=f"snip [compressor.options.temperature={i}, optimizer.learning_rate=0.{i}]")
    legend = place_legend(ax, fig)
    fig.tight_layout()
    fig.canvas.draw()
    box, plot, page = legend.get_window_extent(), ax.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    assert box.x0 >= plot.x1  # beside the axes, not over the lines
    assert plot.width > 0.3 * page.width  # and the plot keeps a usable width
    plt.close(fig)


# ------------------------------------------------------------------------------- copies and impossible values
def _copy_run(run: Path, root: Path, to: Path) -> Path:
    """``run`` (a run folder of the results root ``root``) copied to the same place below ``to``."""
    import shutil

    target = to / run.relative_to(root)
    shutil.copytree(run, target)
    return target


def test_copies_of_one_run_are_counted_once_and_listed(tmp_path):
    results = tmp_path / "results"
    run = make_run(results / "a", seed=0, acc=0.9528)
    make_run(results / "a", seed=1, acc=0.9)
    copies = [_copy_run(run, results / "a", results / name) for name in ("b", "c")]
    logged: list[str] = []
    report = build_report(results, tmp_path / "rep", figures=False, progress=False, log=logged.append)
    (row,) = report.aggregated.itertuples()
    assert row.n == 2 and row.seeds == "0,1" and row.mean == pytest.approx((0.9528 + 0.9) / 2)
    dup = report.issues[report.issues["status"] == "duplicate"]
    assert sorted(dup["run_dir"]) == sorted(map(str, copies))
    assert all(str(run) in reason and "identical results.json" in reason for reason in dup["reason"])
    assert any(line.startswith("warning: 2 run folder(s) are copies") for line in logged)
    issues_csv = pd.read_csv(tmp_path / "rep" / "issues.csv")
    assert sorted(issues_csv.loc[issues_csv["status"] == "duplicate", "run_dir"]) == sorted(map(str, copies))
    assert "duplicate" in report.markdown and (tmp_path / "rep" / "rerun.txt").read_text() == ""


def test_the_parent_of_two_results_roots_counts_their_common_runs_once(tmp_path):
    one = [make_run(tmp_path / "one", seed=s, acc=0.9 + s / 100) for s in (0, 1)]
    two = tmp_path / "two"
    import shutil

    shutil.copytree(tmp_path / "one", two)
    (one[1] / "results.json").write_text(json.dumps({"final_test_acc": 0.5, "best_val_test_acc": 0.5}))  # a rerun
    report = build_report(tmp_path, tmp_path / "rep", figures=False, progress=False, log=lambda s: None)
    (row,) = report.aggregated.itertuples()
    assert row.n == 2 and row.seeds == "0,1"
    dup = report.issues[report.issues["status"] == "duplicate"].set_index("run_dir")
    assert len(dup) == 2
    assert "identical results.json" in dup.loc[str(two / one[0].relative_to(tmp_path / "one")), "reason"]
    assert "different results.json" in dup.loc[str(two / one[1].relative_to(tmp_path / "one")), "reason"]


IMPOSSIBLE = {  # results.json field -> a value it can never hold, and the reason's words
    "best_val_test_acc": (-3, "best_val_test_acc is -3, outside [0, 1]"),
    "final_test_acc": (17.5, "final_test_acc is 17.5, outside [0, 1]"),
    "final_test_loss": (-0.5, "final_test_loss is -0.5, negative"),
    "train_seconds": (-2.0, "train_seconds is -2.0, negative"),
    "epoch_seconds": ([1.0, -1.0], "epoch_seconds holds -1.0, negative"),
    "layer_density": ({"fc.weight": 1.5}, "layer_density holds 1.5, outside [0, 1]"),
    "final_test_f1": ("high", "final_test_f1 is 'high', not a number"),
}


def test_impossible_values_make_a_run_broken_never_averaged(tmp_path):
    for s in (0, 1):
        make_run(tmp_path, seed=s, acc=0.9)
    bad = {}
    for i, (key, (value, _)) in enumerate(IMPOSSIBLE.items(), start=2):
        bad[key] = make_run(tmp_path, seed=i, acc=0.9)
        res = json.loads((bad[key] / "results.json").read_text())
        (bad[key] / "results.json").write_text(json.dumps({**res, key: value}))
    report = build_report(tmp_path, tmp_path / "rep", figures=False, progress=False, log=lambda s: None)
    (row,) = report.aggregated.itertuples()
    assert row.n == 2 and row.seeds == "0,1" and row.mean == pytest.approx(0.9)
    issues = report.issues.set_index("run_dir")
    for key, (_, words) in IMPOSSIBLE.items():
        assert issues.loc[str(bad[key]), "status"] == "broken", key
        assert f"results.json: {words}" in issues.loc[str(bad[key]), "reason"], key


class _FullDisk:
    """A file opened for writing on a disk with ``budget[0]`` bytes left: the write that passes it writes
    what fits (a truncated file, as a full disk leaves) and raises ENOSPC."""

    def __init__(self, fh: Any, budget: list[int], fd_ok: bool) -> None:
        self._fh, self._budget, self._fd_ok = fh, budget, fd_ok

    def write(self, data: Any) -> int:
        left = self._budget[0]
        if len(data) > left:
            self._budget[0] = 0
            if left:
                self._fh.write(data[:left])
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget[0] -= len(data)
        return self._fh.write(data)

    def fileno(self) -> int:
        if not self._fd_ok:  # keep writers that would write through the descriptor (PIL) on write()
            raise io.UnsupportedOperation("fileno")
        return self._fh.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.close()


def _full_disk(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    left, real_open, real_fdopen = [budget], builtins.open, os.fdopen

    def writing(mode: str) -> bool:
        return any(c in mode for c in "wax+")

    def fake_open(file: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        fh = real_open(file, mode, *a, **kw)
        return _FullDisk(fh, left, False) if writing(mode) and not isinstance(file, int) else fh

    def fake_fdopen(fd: int, mode: str = "r", *a: Any, **kw: Any) -> Any:
        fh = real_fdopen(fd, mode, *a, **kw)
        return _FullDisk(fh, left, True) if writing(mode) else fh

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "fdopen", fake_fdopen)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("budget", [0, 5_000, 40_000], ids=["at_once", "in_the_tables", "in_the_figures"])
def test_a_full_disk_during_report_is_one_error_and_keeps_the_previous_report(tmp_path, capsys, monkeypatch,
                                                                              budget):
    results = tmp_path / "results"
    for seed in (0, 1):
        make_run(results, criterion="none", seed=seed, acc=0.99)
        make_run(results, criterion="snip", seed=seed, acc=0.95, mask=_mask([1] * 3 + [0] * 27))
        make_run(results, criterion="random", seed=seed, acc=0.9, mask=_mask([0] * 27 + [1] * 3))
    out = tmp_path / "rep"
    assert main.main(["report", str(results), "--out", str(out)]) == 0
    before, siblings = _tree(out), sorted(p.name for p in tmp_path.iterdir())
    assert "report.md" in before and any(name.endswith(".pdf") for name in before)
    make_run(results, criterion="snip", seed=2, acc=0.97, mask=_mask([1] * 3 + [0] * 27))  # the new report differs
    capsys.readouterr()
    _full_disk(monkeypatch, budget)
    code = main.main(["report", str(results), "--out", str(out)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"report: cannot write {out}{os.sep}") and "disk is full" in lines[0], lines[0]
    assert f"the previous report in {out} is unchanged" in lines[0] and ".staging-" not in lines[0]
    assert _tree(out) == before  # byte for byte, nothing added (no temporary or partial file)
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # no staging folder left beside it
