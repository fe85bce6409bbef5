"""Launchers (launch/submit.py) and the status command (launch/status.py).

The Slurm test runs against a real single-node Slurm: `.ci/run` starts one (`bash .ci/slurm.sh up`).  In
CI it always runs; on a machine without a running Slurm it is reported as skipped (not passed), with
the command that starts one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
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
# The Slurm tests may share the cluster with other runs (another checkout's CI, a user's jobs): they act
# only on their own job ids, cancel those when they end, and skip -- naming the cause -- when the cluster
# cannot run their jobs (controller gone, their job cancelled from outside, resources held by other jobs).
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


@pytest.fixture
def own_jobs():
    """The job ids a test submitted: cancelled (these ids only) when it ends, passed or not."""
    jobs: list[str] = []
    yield jobs
    for job in jobs:
        subprocess.run(["scancel", job], capture_output=True)


def _job_states(job: str) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` of ``job`` (an array: each task) as the controller knows it; skips the
    test when the controller cannot be reached (stopped by someone else while the test ran)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:
            return {}  # purged after MinJobAge
        if not _slurm_running():
            pytest.skip(f"the Slurm controller went away while job {job} ran (stopped by another run, e.g. "
                        f"another checkout's `.ci/slurm.sh down`?): {out.stderr.strip()}")
        pytest.fail(f"scontrol show job {job}: {out.stderr.strip()}")
    states = {}
    for line in out.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        task = fields.get("ArrayTaskId")
        key = f"{fields.get('ArrayJobId')}_{task}" if task and task.isdigit() else fields.get("JobId", job)
        states[key] = (fields.get("JobState", "?"), fields.get("Reason", "None"))
    return states


def _others_on_the_cluster(job: str) -> list[str]:
    """The jobs of the cluster that are not ``job``'s (id, user, state, name)."""
    out = subprocess.run(["squeue", "-h", "-a", "-o", "%i %u %T %j"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if not line.split()[0].startswith((f"{job}_", f"{job} "))
            and line.split()[0] != job]


def _wait(condition, seconds: float, what: str, job: str) -> None:
    """Wait for ``condition`` while watching this test's own ``job``: a task of it that someone else
    cancelled, or that waits for resources other jobs hold until the time is up, skips the test (naming
    why); a task that failed, or a timeout without such a cause, fails it."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        for task, (state, reason) in _job_states(job).items():
            if state in ("CANCELLED", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"):
                pytest.skip(f"job {task} ended {state} ({reason}) by something outside this test while it "
                            f"waited for {what}; other jobs: {_others_on_the_cluster(job)}")
            if state in ("FAILED", "OUT_OF_MEMORY", "TIMEOUT"):
                pytest.fail(f"job {task} ended {state} ({reason}) while the test waited for {what}")
            if state == "PENDING" and reason in ("PartitionDown", "PartitionInactive", "ReqNodeNotAvail",
                                                 "NodeDown", "PartitionNodeLimit", "PartitionTimeLimit"):
                pytest.skip(f"job {task} cannot start on this cluster ({reason}) while the test waited for {what}")
        time.sleep(0.5)
    states = _job_states(job)
    waiting = {t: r for t, (s, r) in states.items() if s == "PENDING" and r in ("Resources", "Priority")}
    others = _others_on_the_cluster(job)
    if waiting and others:
        pytest.skip(f"after {seconds}s waiting for {what}, tasks {waiting} still wait for resources held by "
                    f"other jobs of the cluster: {others}")
    pytest.fail(f"timed out after {seconds}s waiting for {what}; job {job}: {states}")


def _kill_here(lock: Path, task: str) -> None:
    """SIGKILL the process of ``task`` that holds ``lock`` when it runs on this machine: Slurm kills a
    requeued job only KillWait seconds after its SIGTERM (which submitit ignores), and a run could finish
    in between; killing it at once makes the requeue interrupt the run whatever the cluster's KillWait."""
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return  # released: the task is already gone
    if holder.get("job") == task and holder.get("host") == socket.gethostname():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(holder["pid"]), signal.SIGKILL)


def test_slurm_array_completes_and_a_requeued_task_resumes_bit_exactly(slurm, own_jobs, make_config,
                                                                       tmp_path: Path, capsys) -> None:
    long = {"training.num_steps": 60, "model.options": {"width": 32}, "dataset.batch_size": 32}
    make_config("a_long", folder="grid", **long)
    for name, crit in (("b", "random"), ("c", "magnitude"), ("d", "none")):
        make_config(name, folder="grid", **{"training.compressor.class": crit, "training.num_steps": 2})
    grid, results = tmp_path / "grid", tmp_path / "res"
    assert main.main(["run", str(grid), "--launcher", "slurm", "--time", "10", "--cpus-per-run", "1",
                      "--results", str(results)]) == 0
    out = capsys.readouterr().out
    job = out.split("job array ")[1].split(":")[0]
    own_jobs.append(job)
    assert f"squeue -j {job}" in out and "python main.py status" in out
    folder = RunSpec.load(grid / "a_long.json").folder(results)

    def epochs_done() -> int:
        return len(folder.read_or_none("history.json") or [])

    _wait(lambda: epochs_done() >= 3, 180, "the long run's third epoch", job)
    assert not folder.is_completed(), "the long run finished before it could be requeued"
    requeue = subprocess.run(["scontrol", "requeue", f"{job}_0"], capture_output=True, text=True)
    assert requeue.returncode == 0, (requeue.stderr, folder.status())
    _kill_here(lock_path(folder.path), f"{job}_0")
    # Slurm holds a requeued job back for a while: let it start now
    _wait(lambda: _job_states(job).get(f"{job}_0", ("?",))[0] == "PENDING" or folder.status()["attempts"] > 1,
          60, "the requeued task to be pending", job)
    first = folder.status()
    if first["status"] == "completed" and first["attempts"] == 1:  # only where the task ran on another host
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
        kill_wait = next((" ".join(line.split()) for line in config.splitlines() if line.startswith("KillWait")), "")
        pytest.skip(f"the first attempt finished its run within the cluster's KillWait ({kill_wait}) after the "
                    f"requeue, on a host ({first.get('host', 'not this one')}) where this test cannot kill it")
    subprocess.run(["scontrol", "update", f"jobid={job}_0", "StartTime=now"], capture_output=True)
    _wait(lambda: all(RunSpec.load(c).folder(results).is_completed() for c in grid.glob("*.json")), 300,
          "every run of the array to complete", job)
    status = folder.status()
    assert status["attempts"] == 2 and status["resumed"] is True, status
    assert status["log"].endswith("_log.out") and Path(status["log"]).exists()  # the task's Slurm log
    reference = run_config(grid / "a_long.json", results=tmp_path / "seq", log=lambda s: None)
    assert _same(_weights(reference.run_dir), _weights(folder.path))
    # resubmitting submits nothing: every run is complete
    assert main.main(["run", str(grid), "--launcher", "slurm", "--results", str(results)]) == 0
    assert "4 completed runs are not submitted again" in capsys.readouterr().out


def test_slurm_runs_one_config_on_two_ranks_like_one_process(slurm, own_jobs, make_config, tmp_path: Path,
                                                             capsys) -> None:
    cfg = make_config("mlp", folder="one", **{"model": {"class": "mlp", "options": {"hidden": [64]}},
                                              "dataset.batch_size": 64, "dataset.train4val": False,
                                              "dataset.options": {"test_fraction": 0.2006}})
    results = tmp_path / "res"
    assert main.main(["run", str(cfg), "--launcher", "slurm", "--ranks-per-run", "2", "--cpus-per-run", "1",
                      "--time", "10", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "of 2 ranks each" in out
    job = out.split("job array ")[1].split(":")[0]
    own_jobs.append(job)
    folder = RunSpec.load(cfg).folder(results)
    _wait(folder.is_completed, 240, "the two-rank run to complete", job)
    res = folder.read("results.json")
    assert res["world_size"] == 2 and res["masks_verified_on_ranks"] == 2
    single = run_config(cfg, results=tmp_path / "seq", log=lambda s: None)
    a, b = _weights(folder.path), _weights(single.run_dir)
    assert all(float((a[k] - b[k]).norm() / b[k].norm()) < 1e-5 for k in b)
