"""Disk use is chosen (issue 22, item 10): ``general.keep.checkpoint`` decides whether a completed run keeps
``checkpoint.pt`` (never part of the run identity, never changing a number), and ``main.py status`` shows the
disk use of a results folder from file sizes alone."""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path
from typing import Callable

import pytest
import torch
from test_report import make_run

import main
from launch.status import collect, disk_lines, disk_use, render, size_text
from reporting import load_runs
from runspec import RunSpec
from runspec.folder import Files
from tests.helpers import flip_tensor_byte
from utils.io import load_torch

TIMES = ("_seconds",)  # wall-clock fields: the only ones two identical runs may differ in


@pytest.fixture
def run_with(make_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """run_with(keep) -> (config, results root, run folder) of a completed tiny run with that keep."""

    def run(keep: str | None) -> tuple[Path, Path, Path]:
        extra = {} if keep is None else {"general.keep": {"checkpoint": keep}}
        config, root = make_config(f"keep_{keep}", **extra), tmp_path / f"results_{keep}"
        assert main.main(["run", str(config), "--results", str(root)]) == 0, capsys.readouterr().out
        capsys.readouterr()
        return config, root, RunSpec.load(config).folder(root).path

    return run


def _rerun(config: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main.main(["run", str(config), "--results", str(root)])
    return code, capsys.readouterr().out


def test_keep_none_deletes_the_checkpoint_and_the_run_stays_completed(run_with, capsys) -> None:
    config, root, run_dir = run_with("none")
    assert not (run_dir / Files.CHECKPOINT).exists() and not (run_dir / Files.CHECKPOINT_PREV).exists()
    for name in (Files.RESULTS, Files.MASK, Files.FINAL_MODEL):
        assert (run_dir / name).is_file(), name
    status = json.loads((run_dir / Files.STATUS).read_text())
    assert status["status"] == "completed" and isinstance(status.get("checkpoint_deleted"), str)
    assert json.loads((run_dir / Files.CONFIG).read_text())["general"]["keep"] == {"checkpoint": "none"}
    assert collect(root).states == {str(run_dir): "completed"}
    runs = load_runs(root, progress=False).runs
    assert list(runs["status"]) == ["completed"]
    code, out = _rerun(config, root, capsys)
    assert code == 0 and "1 skipped" in out and "epoch " not in out, out


def test_keep_none_then_a_damaged_mask_is_refused_saying_the_checkpoint_was_not_kept(run_with, capsys) -> None:
    config, root, run_dir = run_with("none")
    history = (run_dir / Files.HISTORY).read_bytes()
    flip_tensor_byte(run_dir / Files.MASK)
    code, out = _rerun(config, root, capsys)
    assert code != 0, out
    assert "epoch " not in out and (run_dir / Files.HISTORY).read_bytes() == history, "it trained again"
    refusal = next(line for line in out.splitlines() if "cannot be repaired" in line)
    assert Files.MASK in refusal and "--force" in refusal
    assert f"{Files.CHECKPOINT} was not kept: general.keep.checkpoint 'none' deleted it" in refusal
    notes = json.loads((run_dir / Files.STATUS).read_text()).get("notes") or []
    assert any("was not kept" in n for n in notes), notes
    code, out = main.main(["run", str(config), "--results", str(root), "--force"]), capsys.readouterr().out
    assert code == 0 and "epoch " in out and not (run_dir / Files.CHECKPOINT).exists(), out


@pytest.mark.parametrize("keep", ["last", None])
def test_keep_last_and_the_default_keep_the_checkpoint(run_with, keep: str | None) -> None:
    _, _, run_dir = run_with(keep)
    assert (run_dir / Files.CHECKPOINT).is_file() and not (run_dir / Files.CHECKPOINT_PREV).exists()
    assert "checkpoint_deleted" not in json.loads((run_dir / Files.STATUS).read_text())
    assert json.loads((run_dir / Files.CONFIG).read_text())["general"]["keep"] == {"checkpoint": "last"}


def test_keep_is_not_part_of_the_identity_and_changes_no_number(run_with, make_config, capsys) -> None:
    specs = {keep: RunSpec.load(make_config(f"same_{keep}", **{"general.keep": {"checkpoint": keep}}))
             for keep in ("last", "none")}
    assert specs["last"].hash() == specs["none"].hash() and specs["last"].run_path() == specs["none"].run_path()
    assert specs["last"].identity() == specs["none"].identity() == RunSpec.load(make_config("same")).identity()
    (_, _, kept), (config_none, _, dropped) = run_with("last"), run_with("none")
    assert kept.relative_to(kept.parents[5]) == dropped.relative_to(dropped.parents[5])
    a, b = (json.loads((d / Files.RESULTS).read_text()) for d in (kept, dropped))
    numbers = sorted(k for k in a if not k.endswith(TIMES))
    assert len(numbers) > 10 and {k: a[k] for k in numbers} == {k: b.get(k) for k in numbers}
    for name in (Files.MASK, Files.FINAL_MODEL):
        x, y = load_torch(kept / name), load_torch(dropped / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    # the run made with keep 'last' is the same run for a config saying 'none': skipped, and its checkpoint stays
    code, out = _rerun(config_none, kept.parents[5], capsys)
    assert code == 0 and "1 skipped" in out and (kept / Files.CHECKPOINT).is_file(), out


# ------------------------------------------------------------------------------------ status: disk use
def _write(path: Path, size: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return size


def _sizes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_status_prints_the_disk_use_of_a_results_folder(tmp_path, capsys, monkeypatch) -> None:
    root = tmp_path / "results"
    done = [make_run(root, seed=s, acc=0.8) for s in (0, 1)]
    failed = make_run(root, seed=2, status="failed")
    sizes = {"checkpoint": 0, "model": 0, "mask": 0, "logs": 0}
    for i, run in enumerate(done):
        sizes["model"] += _write(run / Files.FINAL_MODEL, 45_000 + i)
        sizes["mask"] += _write(run / Files.MASK, 11_000 + i)
        sizes["logs"] += _write(run / "tensorboard" / "events.out.tfevents.1", 700) + _write(run / Files.HISTORY, 300)
    sizes["checkpoint"] += _write(done[0] / Files.CHECKPOINT, 179_000)  # done[1]: kept none
    sizes["checkpoint"] += _write(failed / Files.CHECKPOINT, 150_000)
    sizes["checkpoint"] += _write(failed / (Files.CHECKPOINT + Files.DAMAGED), 1_000)
    os.link(failed / Files.CHECKPOINT, failed / Files.CHECKPOINT_PREV)  # as utils.io keeps it: one file on disk
    cache = _write(root / "score_cache" / "snip-abc.pt", 40_000)
    sizes["logs"] += _write(root / "batches" / "20260101-000000-000000.json", 900)
    beside = cache + 900

    status = collect(root)
    use = status.disk
    runs = {str(d): _sizes(d) for d in (*done, failed)}
    runs[str(failed)] -= 150_000  # the hard link
    assert use.total == sum(runs.values()) + beside == _sizes(root) - 150_000
    assert use.by_state == {"completed": [runs[str(done[0])] + runs[str(done[1])], 2], "failed": [runs[str(failed)], 1]}
    assert use.beside_runs == beside
    records = sum(_sizes(d) for d in (*done, failed)) - 150_000 - sum(sizes.values()) + 900
    assert use.by_kind == {**sizes, "cache": cache, "records": records}
    assert main.main(["status", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == render(status).splitlines()
    assert (f"disk {size_text(use.total)}: runs completed {size_text(use.by_state['completed'][0])} in 2, failed "
            f"{size_text(runs[str(failed)])} in 1; beside the run folders {size_text(beside)}") in lines
    by_kind = next(line for line in lines if line.startswith("disk by kind: "))
    assert by_kind.startswith(f"disk by kind: checkpoint {size_text(sizes['checkpoint'])}, model "
                              f"{size_text(sizes['model'])}, cache {size_text(cache)}, mask {size_text(sizes['mask'])}")

    # stat only: the disk use opens no file
    def refuse(*args, **kwargs):
        raise AssertionError(f"disk_use opened a file: {args[:1]}")

    with monkeypatch.context() as patch:
        for module, name in ((builtins, "open"), (io, "open"), (os, "open")):
            patch.setattr(module, name, refuse)
        again = disk_use(root, status.states)
    assert again == use
    # --sweep: only the sweep's run folders
    only = disk_use(root, {str(failed): "failed"}, only_runs=True)
    assert only.total == runs[str(failed)] and only.beside_runs == 0 and only.by_state == {"failed": [only.total, 1]}
    text = size_text(only.total)
    assert disk_lines(only)[0] == f"disk {text} in the sweep's run folders: failed {text} in 1"
    assert render(collect(root)).splitlines()[-2].startswith("disk ")


@pytest.mark.parametrize("size, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (178_916_026, "170.6 MiB"),
                                        (2.5 * 2**30, "2.5 GiB"), (3 * 2**50, "3072.0 TiB")])
def test_size_text(size: float, text: str) -> None:
    assert size_text(size) == text
