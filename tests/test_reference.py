"""The shipped FTS Table 1 reference and ``report --reference``: published cells beside ours, the difference
and whether ours lies within the published ± std; bad reference files are refused naming file, line, column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_report import make_run

import main
from reporting.reference import NO_STD, ReferenceError, compare, load_reference, unmatched_reason

ROOT = Path(__file__).resolve().parent.parent
TABLE1 = ROOT / "docs" / "reference" / "fts_table1.csv"
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


def test_paper_configs_parse_and_use_the_table1_sparsities_and_the_fts_protocol():
    from launch.runner import collect_configs
    from runspec import RunSpec

    files = collect_configs([ROOT / "exp_configs" / "paper"], recursive=True)
    assert len(files) >= 5 * 363 + 123
    sparsities, structured, preset = set(), set(), []
    for f in files:
        spec = RunSpec.load(f)
        cfg = spec.config
        if spec.prunes:
            (structured if cfg.training.compressor.structure != "none" else sparsities).add(
                cfg.training.compressor.sparsity)
        if cfg.dataset.name == "imagefolder":  # CIFAR-10 JPEG folders: the official constants given explicitly
            assert cfg.dataset.options["std"] == [0.2023, 0.1994, 0.2010], f
        else:
            assert cfg.dataset.normalization == "official", f
        if "fts_protocol" in str(f):
            preset.append(spec)
    assert sparsities == {0.8, 0.9, 0.95, 0.98, 0.99}
    assert structured == {0.25, 0.5, 0.75}  # the structured (Figure 4) grid: fraction of heads + neurons removed
    assert len(preset) == 8 * 5 * 3 + 3 + 1  # the generated grid + its base in presets/
    for spec in preset:
        cfg = spec.config
        opt = cfg.training.optimizer
        assert (cfg.general.experiment, cfg.training.num_steps, opt.learning_rate, opt.kwargs.lr_drops,
                opt.kwargs.lr_drop_factor, cfg.dataset.batch_size) == ("early", 160, 0.01, [60, 120], 0.2, 512)
        assert cfg.dataset.train4val and cfg.dataset.val_fraction == 0.2
        assert cfg.training.compressor.per_class_samples is None and spec.experiment_options.prune_epoch == 1
    criteria = {s.config.training.compressor.name for s in preset if s.prunes}
    table1 = set(load_reference(TABLE1)["criterion"])
    assert criteria == table1 - {"fbss"}  # every Table 1 criterion we have


def test_the_autosparse_paper_config_selects_their_recipe():
    from runspec import RunSpec

    spec = RunSpec.load(ROOT / "exp_configs" / "autosparse" / "cifar10_resnet18_paper.json", build=True)
    cfg, irp = spec.config, spec.experiment_options
    assert (irp.iterations, irp.schedule, irp.order, irp.reset_non_prunable, irp.grad_feature) == (
        20, "equal", "prune_first", False, "train_sum")
    assert irp.epochs_per_iteration == 160 and cfg.training.compressor.sparsity == 0.99
    assert cfg.training.compressor.prune_classifier and cfg.dataset.batch_size == 64
    opt = cfg.training.optimizer
    assert opt.kwargs.nesterov and opt.learning_rate == 0.01 and opt.kwargs.lr_drops == [60, 120]


def test_validate_of_a_folder_of_grid_folders_checks_the_subfolders(make_config, tmp_path, capsys):
    make_config("a", folder="grids/one")
    make_config("b", folder="grids/two")
    assert main.main(["validate", str(tmp_path / "grids")]) == 0
    out = capsys.readouterr().out
    assert "validating its subfolders" in out and "2 valid, 0 invalid" in out


def test_no_matching_cell_says_why_and_our_dataset_can_be_matched_to_theirs(tmp_path, capsys):
    """Issue 22.11: runs on the CIFAR-10 JPEG folders are imagefolder runs; none of the published cells
    matched and nothing said why."""
    results = tmp_path / "results"
    make_run(results, criterion="snip", sparsity=0.9, seed=0, acc=0.92)  # a digits run
    ref = tmp_path / "ref.csv"
    ref.write_text("dataset,model,criterion,sparsity,mean,std,source\ncifar10,digits_cnn,snip,0.9,92.0,1.5,made up\n")
    args = ["report", str(results), "--out", str(tmp_path / "rep"), "--no-figures", "--reference", str(ref)]
    assert main.main(args) == 0
    printed = capsys.readouterr().out
    assert "no published cell matches a run" in printed
    assert "dataset: the reference has cifar10; the runs have digits" in printed
    assert main.main(args + ["--reference-dataset", "digits=cifar10"]) == 0
    table = pd.read_csv(tmp_path / "rep" / "reference.csv", keep_default_na=False)
    assert table["ours"].iloc[0].startswith("92.00") and table["within_std"].iloc[0] == "yes"
    assert "no published cell matches" not in capsys.readouterr().out


def test_the_explanation_names_the_image_folder_remedy():
    agg = pd.DataFrame([{"dataset": "imagefolder", "model": "resnet18", "criterion": "snip", "sparsity": 0.9,
                         "dense": False}])
    ref = pd.DataFrame([{"dataset": "cifar10", "model": "resnet18", "criterion": "snip", "sparsity": 0.9}])
    text = unmatched_reason(agg, ref)
    assert "dataset: the reference has cifar10; the runs have imagefolder" in text
    assert "--reference-dataset imagefolder=cifar10" in text and "model:" not in text
    assert "--reference-dataset" not in unmatched_reason(agg, ref, {"imagefolder": "cifar10"})


@pytest.mark.parametrize("flags,message", [
    (["--metric", "bogus"], "--metric 'bogus': no completed run has it in results.json; valid: best_val_test_acc"),
    (["--sparsity", "nan"], "expected a sparsity in [0, 1)"),
    (["--sparsity", "1.5"], "expected a sparsity in [0, 1)"),
    (["--reference-dataset", "cifar10"], "expected OURS=PUBLISHED")])
def test_bad_report_flags_are_one_clear_error(tmp_path, capsys, flags, message):
    results = tmp_path / "results"
    make_run(results, criterion="snip", sparsity=0.9, seed=0, acc=0.92)
    try:
        code = main.main(["report", str(results), "--out", str(tmp_path / "rep"), "--no-figures", *flags])
    except SystemExit as stop:  # argparse
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "rep").exists()


def test_report_out_naming_a_file_is_refused(tmp_path, capsys):
    results = tmp_path / "results"
    make_run(results, criterion="snip", sparsity=0.9, seed=0, acc=0.92)
    (tmp_path / "file").write_text("mine")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert main.main(["report", str(results), "--out", str(out), "--no-figures"]) == 2
        assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"
