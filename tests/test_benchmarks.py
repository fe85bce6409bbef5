"""The benchmark scripts stay runnable: a quick scoring run whose naive loops agree with our criteria, and the
quick GPU check on the CPU, whose JSON holds passing correctness rows and positive speeds."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_quick_scoring_benchmark_rows_agree_with_the_naive_loops(capsys: pytest.CaptureFixture[str]) -> None:
    _load("scoring").main(["--quick", "--repeats", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    rows = {m.group(1): m.group(2).strip() for m in
            re.finditer(r"^\| (\w+)\s+\| 10\s+\|(?:[^|]*\|){5}\s*([^|]+)\|$", out, re.MULTILINE)}
    assert set(rows) == {"grad_norm", "snip", "grasp", "fisher_diag", "fts", "hutch_diag", "hts", "synflow"}
    for name, dev in rows.items():
        if name == "synflow":
            assert dev == "mask agree 1.0000"
        else:
            assert float(dev) < 1e-4, (name, dev)
    assert "| hutch_diag  | 10         | 1" in out  # the estimator table's batch-size-10 row


def test_quick_gpu_check_on_the_cpu_writes_passing_checks_and_positive_speeds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu_check = _load("gpu_check")
    out = tmp_path / "gpu_check.json"
    # a generous budget: a loaded CI machine must not turn rows into "skipped: time budget"
    assert gpu_check.main(["--quick", "--device", "cpu", "--out", str(out), "--budget", "600"]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    by = lambda section: [r for r in rows if r["section"] == section]  # noqa: E731
    assert report["meta"]["quick"] and report["meta"]["device"] == "cpu"
    assert set(report["sections"]) == {"correctness", "training", "scoring"}

    criteria = gpu_check.pruning_criteria()
    assert len(criteria) >= 15 and "none" not in criteria and {"hts", "autosparse", "erk"} <= set(criteria)
    checks = {r["item"]: r for r in by("correctness")}
    for name in criteria:
        row = next(r for item, r in checks.items() if item.startswith(f"{name} scores: cpu vs cpu"))
        assert row["status"] == "pass" and row["numbers"]["max_dev"] < 1e-6, row
    compiled = [r for item, r in checks.items() if "torch.compile" in item]
    assert len(compiled) == 1 and compiled[0]["status"].startswith("skipped: on the CPU")
    others = [r for r in checks.values() if r not in compiled]
    assert len(others) == 1 + len(criteria) + 4 + 3 + 5 + 2 and all(r["status"] == "pass" for r in others), others
    routes = [r for item, r in checks.items() if " vs loop " in item]
    assert len(routes) == 4 and all(0 <= r["numbers"]["max_dev"] < 1e-5 for r in routes)
    assert all(r["numbers"]["pruned_nonzero"] == 0 and r["numbers"]["kept_changed"] > 0.5
               for item, r in checks.items() if item.startswith("pruned weights stay zero") and r not in compiled)

    train = {r["item"][:9]: r for r in by("training")}
    assert set(train) == {"train (a)", "train (b)", "train (c)", "train (d)"}
    for key in "abc":
        assert train[f"train ({key})"]["status"] == "measured", train[f"train ({key})"]
        assert train[f"train ({key})"]["numbers"]["images_per_s"] > 0
        assert train[f"train ({key})"]["numbers"]["pruned_nonzero"] == 0
    epochs = [r for r in by("epoch") if "epoch +" in r["item"]]
    assert len(epochs) == 2 and all(r["status"] == "measured" and r["numbers"]["train_images"] == 256
                                    and r["numbers"]["eval_images"] == 64 and r["numbers"]["train_s"] > 0
                                    for r in epochs)

    scoring = {r["item"].split(":")[0]: r for r in by("scoring")}
    assert set(scoring) == set(criteria) and all(r["status"] == "measured" for r in scoring.values())
    for name, row in scoring.items():
        assert row["numbers"]["ours_s"] > 0 and row["numbers"]["samples"] == 10
        data_free = ("magnitude", "random", "uniform", "erk")  # no per-batch loop to compare with
        if name not in data_free:
            assert row["numbers"]["loop_s"] > 0 and row["numbers"]["speedup"] > 0
        if name not in (*data_free, "synflow", "hutch_diag", "hutch_pruning", "hts"):
            assert row["numbers"]["agreement"] < 1e-4, row  # max deviation from the naive loop
    assert scoring["synflow"]["numbers"]["agreement"] == 1.0  # kept-mask agreement

    proj = by("projection")
    hours = next(r for r in proj if r["item"].startswith("paper table"))
    assert hours["status"] == "projection" and hours["numbers"]["gpu_hours"] > 0
    assert "not judged (--quick" in hours["value"]
    assert any(r["status"].startswith("skipped: no GPU memory") for r in proj)
    printed = capsys.readouterr().out.rstrip().splitlines()
    assert printed[-1].startswith("| projection") and any(line.startswith("| section") for line in printed[-60:])


def test_quick_structured_benchmark_checks_compact_against_masked_and_prints_ratios(
        capsys: pytest.CaptureFixture[str]) -> None:
    rows = _load("structured").main(["--quick", "--models", "resnet18", "--sparsities", "0.5", "--device", "cpu"])
    by = {r["model"]: r for r in rows}
    assert set(by) == {"dense", "masked", "compact"}
    assert by["masked"]["params"] == by["dense"]["params"] > by["compact"]["params"]
    assert by["dense"]["latency_ratio"] == 1.0 and by["compact"]["throughput_ratio"] > 0
    assert "| compact | 0.5 |" in capsys.readouterr().out
