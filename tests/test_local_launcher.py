"""``--launcher local`` ends cleanly (launch/local.py, launch/worker.py) and its flags are bounded (main.py).

Issue 22 item 5: SIGTERM or Ctrl-C of the launcher stops its workers, marks their runs interrupted, prints
the summary and writes the batch record; a worker killed from outside is reported as such while its run
folder keeps its own state; every count and time flag is parsed with a clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import main
from launch.local import _collect, _Worker
from launch.runner import run_config
from launch.submit import time_minutes
from runspec import RunSpec

ROOT = Path(__file__).resolve().parent.parent


def _workers_of(results: Path) -> list[int]:
    """Pids of the worker processes that write into ``results`` (their command line names it)."""
    out = subprocess.run(["pgrep", "-f", f"launch.worker .*--results {results}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _wait_until(check, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def _status(results: Path, config: Path) -> str | None:
    try:
        return json.loads((RunSpec.load(config).run_dir(results) / "status.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def _launch(grid: Path, results: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), "run", str(grid), "--launcher", "local",
                             "--results", str(results), *extra], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_launcher_stops_its_workers_and_records_the_batch(make_config, tmp_path: Path, sig) -> None:
    for seed, name in enumerate("abc"):  # long enough to be stopped mid-training; c is never started
        make_config(name, folder="grid", **{"training.num_steps": 500, "general.id": name, "general.seed": seed})
    grid, results = tmp_path / "grid", tmp_path / "res"
    launcher = _launch(grid, results, "--workers", "2")
    try:
        _wait_until(lambda: all(_status(results, grid / f"{n}.json") == "running" for n in "ab"))
        launcher.send_signal(sig)  # to the launcher alone, as `kill` does (a terminal's Ctrl-C: same path)
        out, _ = launcher.communicate(timeout=90)
    finally:
        launcher.kill()
    assert launcher.returncode == 130, out
    assert "stopping: 2 running worker(s) interrupted" in out and "1 not started" in out, out
    assert "2 interrupted" in out and "Traceback" not in out, out
    assert _workers_of(results) == []  # nothing left training
    for name in "ab":
        assert _status(results, grid / f"{name}.json") == "interrupted"
    assert not RunSpec.load(grid / "c.json").run_dir(results).exists()
    [record] = (results / "batches").glob("*.json")
    assert sorted((o["id"], o["status"]) for o in json.loads(record.read_text())) == \
        [("a", "interrupted"), ("b", "interrupted")]


def test_a_worker_killed_from_outside_is_reported_and_its_run_resumable(make_config, tmp_path: Path) -> None:
    make_config("a", folder="grid", **{"training.num_steps": 500, "general.id": "a"})
    make_config("b", folder="grid", **{"general.id": "b", "general.seed": 1})
    grid, results = tmp_path / "grid", tmp_path / "res"
    launcher = _launch(grid, results, "--workers", "1")
    try:
        _wait_until(lambda: _status(results, grid / "a.json") == "running")
        [worker] = _workers_of(results)
        os.kill(worker, signal.SIGKILL)
        out, _ = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 1, out
    assert "worker process died: killed by SIGKILL" in out and "1 completed (0 skipped), 1 failed" in out, out
    assert _status(results, grid / "a.json") == "interrupted"  # resumable, not a stale "running"
    assert _status(results, grid / "b.json") == "completed"


def test_a_worker_that_dies_after_completing_leaves_its_run_completed(make_config, tmp_path: Path) -> None:
    """The run folder's own state stands: a completed run is reported completed, not failed."""
    cfg = make_config("a", **{"general.id": "a"})
    done = run_config(cfg, results=tmp_path / "res", log=lambda s: None)
    assert done.status == "completed"
    dead = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    dead.wait()
    log = tmp_path / "w.log"
    worker = _Worker(cfg, 1, 0, dead, tmp_path / "never-written.json", log, open(log, "ab"), time.perf_counter())
    outcome = _collect(worker, tmp_path / "res", stopped=False)
    assert outcome.status == "completed" and outcome.test_acc == done.test_acc
    assert "died after completing the run (killed by SIGKILL)" in outcome.reason
    assert _status(tmp_path / "res", cfg) == "completed"


@pytest.mark.parametrize("flag,value", [
    ("--workers", "99999999999999999999"), ("--workers", "2000"), ("--max-parallel", "0"),
    ("--cpus-per-run", "1e3"), ("--ranks-per-run", "-2"), ("--gpus", "0,-1"), ("--gpus", ","),
    ("--time", "bad"), ("--time", "1:2:3:4"), ("--time", "400-00"), ("--mem", "lots")])
def test_every_count_and_time_flag_is_bounded(make_config, flag: str, value: str, capsys) -> None:
    tic = time.perf_counter()
    with pytest.raises(SystemExit) as stop:
        main.main(["run", str(make_config()), "--launcher", "local", flag, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}" in err and "Traceback" not in err, err
    assert time.perf_counter() - tic < 10  # refused, never attempted


def test_slurm_time_forms() -> None:
    forms = {"30": 30, "1:30": 2, "4:00:00": 240, "2-00:00:00": 2880, "1-12": 2160, "1-0:30": 1470, "0:00:10": 1}
    assert {t: time_minutes(t) for t in forms} == forms
    with pytest.raises(ValueError, match="D-HH:MM:SS"):
        time_minutes("4h")


def test_gpus_that_are_not_there_are_refused_before_anything_runs(make_config, capsys) -> None:
    assert main.main(["run", str(make_config()), "--launcher", "local", "--gpus", "4095"]) == 2
    assert "--gpus 4095: " in capsys.readouterr().err
