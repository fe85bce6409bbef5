"""The shipped FTS Table 1 reference and ``report --reference``: published cells beside ours, the difference
and whether ours lies within the published ± std; bad reference files are refused naming file, line, column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_report import make_run

import main
from reporting.reference import NO_STD, ReferenceError, compare, load_reference

ROOT = Path(__file__).resolve().parent.parent
TABLE1 = ROOT / "exp_configs" / "paper" / "fts_table1.csv"
# the target cells (FTS paper Table 1, ResNet18 / CIFAR-10, % test accuracy)
TARGETS = {(0.9, "snip"): 90.36, (0.9, "grasp"): 86.60, (0.9, "fts"): 90.55, (0.9, "magnitude"): 89.88,
           (0.9, "random"): 89.35, (0.98, "snip"): 87.26, (0.98, "fts"): 87.24, (0.98, "grasp"): 85.99,
           (0.99, "fts"): 84.85, (0.99, "snip"): 84.54, (0.99, "grasp"): 84.56, (0.99, "random"): 78.28}


def test_the_shipped_table_holds_the_papers_cells():
    ref = load_reference(TABLE1)
    assert len(ref) == 45 and set(ref["sparsity"]) == {0.8, 0.9, 0.95, 0.98, 0.99}
    assert set(ref["dataset"]) == {"cifar10"} and set(ref["model"]) == {"resnet18"}
    for (s, crit), mean in TARGETS.items():
        row = ref[(ref["sparsity"] == s) & (ref["criterion"] == crit)]
        assert len(row) == 1 and row["mean"].iloc[0] == mean, (s, crit)
    assert ref["std"].notna().all() and (ref["std"] > 0).all()
    assert ref.loc[(ref["sparsity"] == 0.9) & (ref["criterion"] == "snip"), "std"].iloc[0] == 0.34


def _reference(path: Path) -> Path:
    path.write_text("dataset,model,criterion,sparsity,mean,std,source\n"
                    "digits,digits_cnn,snip,0.9,92.0,1.5,made up for the test\n"
                    "digits,digits_cnn,snip,0.5,95.0,0.2,made up\n"
                    "digits,digits_cnn,random,0.9,80.0,,no std given\n"
                    "digits,digits_cnn,fts,0.9,90.0,0.1,no run of ours\n")
    return path


def test_report_reference_prints_published_beside_ours(tmp_path, capsys):
    results = tmp_path / "results"
    for seed, acc in ((0, 0.91), (1, 0.93)):
        make_run(results, criterion="snip", sparsity=0.9, seed=seed, acc=acc)
        make_run(results, criterion="snip", sparsity=0.5, seed=seed, acc=0.97)
        make_run(results, criterion="random", sparsity=0.9, seed=seed, acc=0.9)
    out = tmp_path / "rep"
    ref = _reference(tmp_path / "ref.csv")
    assert main.main(["report", str(results), "--out", str(out), "--no-figures", "--reference", str(ref)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "reference.csv", keep_default_na=False)
    rows = {(r["criterion"], r["sparsity"]): r for _, r in table.iterrows()}
    snip = rows[("snip", 0.9)]
    assert snip["published"] == "92.00 ± 1.50" and snip["ours"] == "92.00 ± 1.41 (2)"
    assert float(snip["difference"]) == pytest.approx(0.0) and snip["within_std"] == "yes"
    far = rows[("snip", 0.5)]
    assert float(far["difference"]) == pytest.approx(2.0) and far["within_std"] == "no"
    rand = rows[("random", 0.9)]
    assert float(rand["difference"]) == pytest.approx(10.0) and rand["within_std"] == NO_STD
    assert rows[("fts", 0.9)]["ours"] == "no run"
    assert "| digits | digits_cnn | snip | 0.9 | 0 | 92.00 ± 1.50 | 92.00 ± 1.41 (2) | 0 | yes |" in printed
    assert "1 of 2 compared cells within the published ± std (1 compared without a published std); 1 published " \
           "cells have no run" in printed
    assert "## Published numbers beside ours" in (out / "report.md").read_text()
    assert (out / "reference.md").is_file()


def test_compare_matches_names_case_insensitively_and_scales_losses_not():
    agg = pd.DataFrame([{"dataset": "cifar10", "model": "resnet18", "criterion": "snip", "warmup": 0, "variant": "",
                         "sparsity": 0.9, "mean": 0.5, "std": float("nan"), "n": 1, "dense": False}])
    ref = pd.DataFrame([{"dataset": "CIFAR10", "model": "ResNet18", "criterion": "SNIP", "sparsity": 0.9,
                         "mean": 0.4, "std": 0.2, "source": ""}])
    loss = compare(agg, ref, "best_val_test_loss")
    assert loss["ours"].iloc[0] == "0.50 ± – (1)" and loss["difference"].iloc[0] == pytest.approx(0.1)
    assert loss["within_std"].iloc[0] == "yes"
    acc = compare(agg, ref.assign(mean=50.5, std=0.2), "best_val_test_acc")
    assert acc["difference"].iloc[0] == pytest.approx(-0.5) and acc["within_std"].iloc[0] == "no"


@pytest.mark.parametrize("content, message", [
    (None, "no such reference file"),
    ("dataset,model,criterion,sparsity,mean\nc,m,snip,0.9,1\n", "missing column(s) std, source"),
    ("dataset,model,criterion,sparsity,mean,std,source\nc,m,snip,0.9,high,0.1,x\n",
     "line 2: column 'mean' is 'high', not a number"),
    ("dataset,model,criterion,sparsity,mean,std,source\nc,m,snip,1.5,90,0.1,x\n", "line 2: column 'sparsity' is 1.5"),
    ("dataset,model,criterion,sparsity,mean,std,source\nc,m,snip,0.9,90,-1,x\n", "line 2: column 'std' is '-1'"),
    ("dataset,model,criterion,sparsity,mean,std,source\n,m,snip,0.9,90,1,x\n", "line 2: column 'dataset' is empty"),
    ("dataset,model,criterion,sparsity,mean,std,source\n", "no published rows"),
])
def test_bad_reference_files_are_refused(tmp_path, capsys, content, message):
    path = tmp_path / "ref.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReferenceError) as err:
        load_reference(path)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)
    (tmp_path / "results").mkdir(exist_ok=True)
    assert main.main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "rep"), "--reference",
                      str(path)]) == 2
    assert message in capsys.readouterr().err
