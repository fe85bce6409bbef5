"""The benchmark scripts stay runnable on the CPU in quick mode, with their numbers checked: scoring rows whose
naive loops agree with our criteria, the GPU speed check's JSON (speeds, ratios to references measured in the
same run, the projection), the training benchmark's table and the structured one's.  Correctness on a CUDA
device is tests/test_gpu.py (``pytest -m gpu``)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

import compressors

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_quick_scoring_benchmark_rows_agree_with_the_naive_loops(capsys: pytest.CaptureFixture[str]) -> None:
    _load("scoring").main(["--quick", "--repeats", "1", "--device", "cpu", "--tables", "main,estimators"])
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


def test_quick_cost_table_counts_every_criterions_passes_as_its_docs_state(capsys: pytest.CaptureFixture[str]) -> None:
    scoring = _load("scoring")
    rows = scoring.main(["--quick", "--tables", "cost", "--device", "cpu", "--floor-repeats", "1"])["cost"]
    out = capsys.readouterr().out
    by = {r["criterion"]: r for r in rows}
    assert list(by) == compressors.pruning_criteria()  # every registered pruning criterion, once
    for name, row in by.items():
        assert row["seconds"] > 0 and isinstance(row["forwards"], int) and isinstance(row["backwards"], int), row
        assert re.search(rf"^\| {name} +\| {row['rounds'] or ''} +\| {row['seconds']:.2f} +\|", out, re.M), name
        if compressors.get(name).needs_data:  # the hooks saw its passes over the mask batch
            assert row["forwards"] >= 1 and row["backwards"] >= 1 and row["passes_s"] > 0, row
        if name in scoring.DOCUMENTED:  # counted by the hooks = stated in the docs, for this batch and options
            assert row["matches"] and (row["forwards"], row["backwards"]) == row["documented"][:2], row
        if row["passes_s"]:
            assert row["ratio"] == pytest.approx(row["seconds"] / row["passes_s"])
            assert row["flagged"] == (row["ratio"] > scoring.COST_GOAL)
        else:
            assert row["ratio"] is None and not row["flagged"] and row["forwards"] == row["backwards"] == 0
    multi = {n for n in by if scoring.has_option(n, "rounds")}
    assert {"synflow", "force", "iter_snip", "grasp_it", "synflow_l2"} <= multi
    assert all(by[n]["rounds"] == 3 for n in multi) and all(by[n]["rounds"] is None for n in set(by) - multi)
    assert by["force"]["forwards"] == by["force"]["backwards"] == 3  # 3 rounds x 1 batch
    assert by["synflow"]["forwards_text"] == "3 (batch 1)"  # one all-ones input per round, its own floor
    assert by["hutch_diag"]["backwards"] == 2  # a gradient, then K = 3 probes in one batched double backward
    assert by["prospr"]["backwards_text"] == "7 (train mode)"  # M = 3 inner gradients + meta loss + M through steps
    assert "every multi-round criterion at --cost-rounds 3 rounds" in out and "benchmarks/phew.py" in out


def test_quick_gpu_check_on_the_cpu_writes_speeds_with_ratios_to_references_of_the_same_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu_check = _load("gpu_check")
    out = tmp_path / "gpu_check.json"
    # a generous budget: a loaded CI machine must not turn rows into "skipped: time budget"
    assert gpu_check.main(["--quick", "--device", "cpu", "--out", str(out), "--budget", "600"]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    by = lambda section: [r for r in rows if r["section"] == section]  # noqa: E731
    assert report["meta"]["quick"] and report["meta"]["device"] == "cpu"
    assert set(report["sections"]) == {"training", "scoring"}
    assert {r["section"] for r in rows} == {"training", "epoch", "scoring", "projection"}  # no correctness rows

    train = {r["item"][:9]: r for r in by("training")}
    assert set(train) == {"train (a)", "train (b)", "train (c)", "train (d)"}
    assert train["train (d)"]["status"].startswith("skipped: on the CPU")  # torch.compile: CUDA only
    rate_a = train["train (a)"]["numbers"]["images_per_s"]
    for key in "abc":
        nums = train[f"train ({key})"]["numbers"]
        assert train[f"train ({key})"]["status"] == "measured" and nums["images_per_s"] > 0 and nums["steps"] >= 2
        assert nums["ratio"] == pytest.approx(nums["images_per_s"] / rate_a)  # against (a), of the same run
        assert train[f"train ({key})"]["ratio"] == f"x{nums['ratio']:.2f} vs (a)"
    assert train["train (a)"]["numbers"]["ratio"] == 1.0
    epochs = [r for r in by("epoch") if "epoch +" in r["item"]]
    assert len(epochs) == 2 and all(r["status"] == "measured" and r["numbers"]["train_images"] == 256
                                    and r["numbers"]["eval_images"] == 64 and r["numbers"]["train_s"] > 0
                                    for r in epochs)
    assert next(r for r in by("epoch") if "checkpoint" in r["item"])["numbers"]["checkpoint_s"] > 0

    criteria = gpu_check.pruning_criteria()
    assert len(criteria) >= 15 and "none" not in criteria and {"hts", "autosparse", "erk"} <= set(criteria)
    scoring = {r["item"].split(":")[0]: r for r in by("scoring")}
    assert set(scoring) == set(criteria) and all(r["status"] == "measured" for r in scoring.values())
    # which criteria have a reference loop is gpu_check's own table; every row names its reference
    assert set(gpu_check.NAIVE) | {"autosparse"} <= set(gpu_check.LOOPS) <= set(criteria)
    for name, row in scoring.items():
        nums = row["numbers"]
        assert nums["ours_s"] > 0 and nums["samples"] == 10
        assert nums["reference"] == gpu_check.reference(name) and nums["reference"] in row["value"], row
        if name not in gpu_check.LOOPS:
            assert "speedup" not in nums and row["ratio"] == "", row
            assert nums["reference"] == ("none: no naive loop written for it" if compressors.get(name).needs_data
                                         else "none: data-free")
            continue
        assert nums["loop_s"] > 0 and nums["speedup"] == pytest.approx(nums["loop_s"] / nums["ours_s"])
        assert row["ratio"] == f"x{nums['speedup']:.1f} vs the loop"
        if name not in ("synflow", *gpu_check.HUTCHINSON):
            assert nums["agreement"] < 1e-4, row  # max deviation from the naive loop
    assert scoring["synflow"]["numbers"]["agreement"] == 1.0  # kept-mask agreement
    assert scoring["magnitude"]["numbers"]["reference"] == "none: data-free"

    proj = by("projection")
    fastest = next(r for r in proj if r["item"].startswith("fastest setting"))
    best = max("abc", key=lambda k: train[f"train ({k})"]["numbers"]["images_per_s"])
    assert fastest["numbers"]["speedup"] == pytest.approx(train[f"train ({best})"]["numbers"]["ratio"])
    hours = next(r for r in proj if r["item"].startswith("paper table"))
    assert hours["status"] == "projection" and hours["numbers"]["gpu_hours"] > 0
    assert hours["numbers"]["gpu_hours"] == pytest.approx(195 * hours["numbers"]["run_s"] / 3600)
    assert "not judged (--quick" in hours["value"]
    assert any(r["status"].startswith("skipped: no GPU memory") for r in proj)
    printed = capsys.readouterr().out.rstrip().splitlines()
    assert "correctness: python -m pytest -m gpu" in printed[0]
    assert printed[-1].startswith("| projection") and any(line.startswith("| section") for line in printed[-40:])


def test_gpu_check_points_a_correctness_section_at_the_gpu_tests(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _load("gpu_check").main(["--sections", "correctness,training"])
    assert "python -m pytest -m gpu" in capsys.readouterr().err


def test_quick_training_benchmark_prints_rates_with_ratios_to_each_kinds_baseline(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("training").main(["--quick", "--device", "cpu", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "batch 16, 1 interleaved steps per row (median), device cpu" in out
    rows = {m.group(1).strip(): (float(m.group(2).replace(",", "")), float(m.group(3)), m.group(4)) for m in
            re.finditer(r"^(\w[\w ,()]+?)\s+([\d,]+\.\d)\s+(\d+\.\d{3})   (.+)$", out, re.MULTILINE)}
    assert set(rows) == {"model step, dense", "model step, masked", "loader only, classic DataLoader",
                         "loader only, device loader", "train step (masked), classic DataLoader",
                         "train step (masked), device loader"}
    rounding = lambda a, b: (a / b) * (0.05 / a + 0.05 / b) + 1e-3  # noqa: E731 - of a / b, rates printed to 0.1
    for name, (rate, ratio, baseline) in rows.items():
        assert rate > 0 and baseline in rows and baseline.split(",")[0] == name.split(",")[0]
        base = rows[baseline][0]
        assert ratio == pytest.approx(rate / base, abs=rounding(rate, base))  # of the printed rates
        if name == baseline:
            assert ratio == 1.0
    overhead = float(re.search(r"masked/dense model-step throughput\): ([+-][\d.]+)%", out).group(1))
    masked, dense = rows["model step, masked"][0], rows["model step, dense"][0]
    assert overhead == pytest.approx(100 * (1 - masked / dense), abs=100 * rounding(masked, dense) + 0.05)
    speedup = float(re.search(r"device loader vs classic DataLoader, full step: x([\d.]+)", out).group(1))
    assert speedup == pytest.approx(rows["train step (masked), device loader"][1], abs=0.01)
    assert re.search(r"one CIFAR-10 epoch \(50,000 images\) at the best full-step rate: [\d,]+ s \(extrapolated", out)


def test_quick_structured_benchmark_checks_compact_against_masked_and_prints_ratios(
        capsys: pytest.CaptureFixture[str]) -> None:
    rows = _load("structured").main(["--quick", "--models", "resnet18", "--sparsities", "0.5", "--device", "cpu"])
    by = {r["model"]: r for r in rows}
    assert set(by) == {"dense", "masked", "compact"}
    assert by["masked"]["params"] == by["dense"]["params"] > by["compact"]["params"]
    assert by["dense"]["latency_ratio"] == 1.0 and by["compact"]["throughput_ratio"] > 0
    assert "| compact | 0.5 |" in capsys.readouterr().out
