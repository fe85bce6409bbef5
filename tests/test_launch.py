"""Launchers (launch/submit.py) and the status command (launch/status.py).

The Slurm test runs against a real single-node Slurm: `.ci/run` starts one (`bash .ci/slurm.sh up`).  In
CI it always runs; on a machine without a running Slurm it is reported as skipped (not passed), with
the command that starts one."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

import main
from launch.runner import run_config
from launch.status import collect
from launch.submit import time_minutes
from runspec import RunSpec
from utils.io import load_torch, write_json
from utils.locks import lock_path


def _weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_torch(Path(run_dir) / "final_model.pt")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_slurm_time_limits_in_minutes() -> None:
    assert [time_minutes(t) for t in ("4:00:00", "30", "1:30", "2-00:00:00", "0:00:10")] == [240, 30, 2, 2880, 1]


@pytest.mark.parametrize("flag,value", [("--workers", "0"), ("--runs-per-task", "-1"), ("--gpus-per-run", "x")])
def test_launcher_counts_are_checked(make_config, flag: str, value: str, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main.main(["run", str(make_config()), "--launcher", "local", flag, value])
    assert stop.value.code == 2 and "expected a whole number" in capsys.readouterr().err


def test_local_workers_give_the_results_of_a_sequential_batch(make_config, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers' thread count, as this process's (bit-equality)
    for name, crit in (("a", "snip"), ("b", "random"), ("c", "magnitude")):
        make_config(name, folder="grid", **{"training.compressor.class": crit})
    grid = tmp_path / "grid"
    assert main.main(["run", str(grid), "--launcher", "local", "--workers", "2", "--results",
                      str(tmp_path / "par")]) == 0
    for cfg in sorted(grid.glob("*.json")):
        seq = run_config(cfg, results=tmp_path / "seq", log=lambda s: None)
        par = RunSpec.load(cfg).run_dir(tmp_path / "par")
        assert _same(_weights(seq.run_dir), _weights(par))
    # completed runs are not run again
    assert main.main(["run", str(grid), "--launcher", "local", "--workers", "2", "--results",
                      str(tmp_path / "par")]) == 0


def test_status_of_a_partly_finished_sweep(make_config, tmp_path: Path, capsys) -> None:
    results = tmp_path / "res"
    done = make_config("done", folder="sweep", **{"training.num_steps": 2})
    running = make_config("running", folder="sweep", **{"training.num_steps": 6})
    broken = make_config("broken", folder="sweep", **{"training.compressor.per_class_samples": 10000})
    make_config("missing", folder="sweep", **{"training.num_steps": 4})
    assert run_config(done, results=results, log=lambda s: None).status == "completed"
    assert run_config(broken, results=results, log=lambda s: None).status == "failed"
    folder = RunSpec.load(running).folder(results)
    folder.path.mkdir(parents=True)
    folder.set_status("running", config_file=str(running))
    now = time.time()
    folder.write("heartbeat.json", {"phase": "train", "epoch": 2, "step": 10, "total_epochs": 6, "epoch_seconds": 30.0,
                                    "host": "node7", "pid": 1, "time": now - 45})
    write_json(lock_path(folder.path), {"pid": 2 ** 22 + 7, "host": os.uname().nodename, "started": "then"})
    status = collect(results, tmp_path / "sweep", now=now)
    assert status.counts == {"completed": 1, "running": 1, "failed": 1, "missing": 1}
    (r,) = status.running
    assert r["host"] == "node7" and r["epoch"] == "2/6" and r["heartbeat_age_s"] == pytest.approx(45)
    assert r["stale"]  # its lock's holder is gone, however fresh the heartbeat
    assert status.stale_locks == [str(lock_path(folder.path))]
    per_epoch = (RunSpec.load(done).folder(results).read("heartbeat.json")["epoch_seconds"] + 30.0) / 2
    # the running run's 4 epochs left, then the failed (3 epochs) and the missing (4) one after another
    assert status.remaining_seconds == pytest.approx(4 * 30 + (3 + 4) * per_epoch)
    assert main.main(["status", str(results), "--sweep", str(tmp_path / "sweep")]) == 0
    text = capsys.readouterr().out
    assert "1 completed, 1 running, 1 failed, 0 interrupted, 1 missing" in text
    assert "on node7, epoch 2/6, heartbeat 45s ago" in text and "stale lock" in text and "ETA 0:0" in text
    assert "per_class_samples=10000" in text and "missing.json" in text


# ---------------------------------------------------------------------------------------------- Slurm
def _slurm_running() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def slurm() -> None:
    if _slurm_running():
        return
    if os.environ.get("CI"):
        pytest.fail("CI runs the Slurm tests: .ci/run starts Slurm with `bash .ci/slurm.sh up`, which failed")
    pytest.skip("no running Slurm on this machine; start a single-node one as root with `bash .ci/slurm.sh up` "
                "(these tests are NOT counted as passed)")


def _squeue(job: str) -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i|%T|%r"], capture_output=True, text=True).stdout
    return [tuple(line.split("|")) for line in out.split()]  # type: ignore[misc]


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {seconds}s waiting for {what}")


def test_slurm_array_completes_and_a_requeued_task_resumes_bit_exactly(slurm, make_config, tmp_path: Path,
                                                                       capsys) -> None:
    long = {"training.num_steps": 60, "model.options": {"width": 32}, "dataset.batch_size": 32}
    make_config("a_long", folder="grid", **long)
    for name, crit in (("b", "random"), ("c", "magnitude"), ("d", "none")):
        make_config(name, folder="grid", **{"training.compressor.class": crit, "training.num_steps": 2})
    grid, results = tmp_path / "grid", tmp_path / "res"
    assert main.main(["run", str(grid), "--launcher", "slurm", "--time", "10", "--cpus-per-run", "1",
                      "--results", str(results)]) == 0
    out = capsys.readouterr().out
    job = out.split("job array ")[1].split(":")[0]
    assert f"squeue -j {job}" in out and "python main.py status" in out
    folder = RunSpec.load(grid / "a_long.json").folder(results)

    def epochs_done() -> int:
        return len(folder.read_or_none("history.json") or [])

    _wait(lambda: epochs_done() >= 3, 120, "the long run's third epoch")
    requeue = subprocess.run(["scontrol", "requeue", f"{job}_0"], capture_output=True, text=True)
    assert requeue.returncode == 0, (requeue.stderr, folder.status())
    # Slurm holds a requeued job back for a while: let it start now
    _wait(lambda: any(s == "PENDING" for _, s, _ in _squeue(f"{job}_0")), 60, "the requeued task to be pending")
    subprocess.run(["scontrol", "update", f"jobid={job}_0", "StartTime=now"], capture_output=True)
    _wait(lambda: all(RunSpec.load(c).folder(results).is_completed() for c in grid.glob("*.json")), 240,
          "every run of the array to complete")
    status = folder.status()
    assert status["attempts"] == 2 and status["resumed"] is True
    assert status["log"].endswith("_log.out") and Path(status["log"]).exists()  # the task's Slurm log
    reference = run_config(grid / "a_long.json", results=tmp_path / "seq", log=lambda s: None)
    assert _same(_weights(reference.run_dir), _weights(folder.path))
    # resubmitting submits nothing: every run is complete
    assert main.main(["run", str(grid), "--launcher", "slurm", "--results", str(results)]) == 0
    assert "4 completed runs are not submitted again" in capsys.readouterr().out


def test_slurm_runs_one_config_on_two_ranks_like_one_process(slurm, make_config, tmp_path: Path, capsys) -> None:
    cfg = make_config("mlp", folder="one", **{"model": {"class": "mlp", "options": {"hidden": [64]}},
                                              "dataset.batch_size": 64, "dataset.train4val": False,
                                              "dataset.options": {"test_fraction": 0.2006}})
    results = tmp_path / "res"
    assert main.main(["run", str(cfg), "--launcher", "slurm", "--ranks-per-run", "2", "--cpus-per-run", "1",
                      "--time", "10", "--results", str(results)]) == 0
    assert "of 2 ranks each" in capsys.readouterr().out
    folder = RunSpec.load(cfg).folder(results)
    _wait(folder.is_completed, 180, "the two-rank run to complete")
    res = folder.read("results.json")
    assert res["world_size"] == 2 and res["masks_verified_on_ranks"] == 2
    single = run_config(cfg, results=tmp_path / "seq", log=lambda s: None)
    a, b = _weights(folder.path), _weights(single.run_dir)
    assert all(float((a[k] - b[k]).norm() / b[k].norm()) < 1e-5 for k in b)
