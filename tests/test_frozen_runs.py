"""Run folders written by an earlier version of this framework (commit f0c6e06, before the spec/ ->
runspec/ and engine restructuring) are still this framework's runs: the current code computes the same
folder names for their configs, ``status --sweep`` calls every one completed, ``run`` skips them,
``report`` reads them and ``export`` rebuilds a model from one.

``tests/data/runs_f0c6e06`` holds the sweep (``sweep/*.json``: pbt with snip, dense, hts per layer, an
official-mode synflow, a structured and an inverted run; early, irp, pat) and what that commit's
``main.py run sweep --results results`` wrote (minus the checkpoints, score cache and TensorBoard files,
to keep the folder small).  Never regenerate it: it is the frozen past the code must keep reading."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

import main
from runspec import RunSpec
from runspec.folder import find_run_dirs

FROZEN = Path(__file__).resolve().parent / "data" / "runs_f0c6e06"
RUNS = 9


@pytest.fixture
def frozen(tmp_path: Path) -> Path:
    shutil.copytree(FROZEN, tmp_path / "frozen")
    return tmp_path / "frozen"


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_current_code_names_the_frozen_runs_as_they_were_named() -> None:
    configs = sorted((FROZEN / "sweep").glob("*.json"))
    assert len(configs) == RUNS
    expected = {str(RunSpec.load(c).run_path()) for c in configs}
    found = {str(d.relative_to(FROZEN / "results")) for d in find_run_dirs(FROZEN / "results")}
    assert found == expected


def test_status_of_the_frozen_sweep_is_all_completed(frozen: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["status", str(frozen / "results"), "--sweep", str(frozen / "sweep")]) == 0
    assert f"{RUNS} completed, 0 running, 0 failed, 0 interrupted, 0 missing" in capsys.readouterr().out


def test_run_skips_every_frozen_run_and_changes_nothing(frozen: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = digests(frozen / "results")
    assert main.main(["run", str(frozen / "sweep"), "--results", str(frozen / "results")]) == 0
    assert f"{RUNS} completed ({RUNS} skipped), 0 failed" in capsys.readouterr().out
    after = {k: v for k, v in digests(frozen / "results").items() if not k.startswith("batches/")}
    assert after == before


def test_report_and_export_read_the_frozen_runs(frozen: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["report", str(frozen / "results"), "--out", str(frozen / "report")]) == 0
    assert f"{RUNS} run folders ({RUNS} completed); 0 issue(s)" in capsys.readouterr().out
    run = RunSpec.load(frozen / "sweep" / "pbt_structured.json").run_dir(frozen / "results")
    assert main.main(["export", str(run), "--format", "compact", "--out", str(frozen / "compact")]) == 0
    assert (frozen / "compact" / "architecture.json").is_file() and (frozen / "compact" / "compact_model.pt").is_file()
