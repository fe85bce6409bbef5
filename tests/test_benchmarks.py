"""The benchmark scripts stay runnable: a quick scoring run whose naive loops agree with our criteria."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
