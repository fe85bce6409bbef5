"""Runs onto other processes and machines with submitit: ``--launcher local`` (a pool of worker processes
on this machine, one GPU each) and ``--launcher slurm`` (one Slurm job array).

Every task runs its configs with :func:`launch.runner.run_config`, so run folders, locks, skipping and
resuming behave exactly as in a plain ``run``.  A Slurm task that times out or is preempted is requeued
by submitit (:class:`RunConfigs` is checkpointable) and resumes its run from the last checkpoint; a
task that is killed and requeued by Slurm itself does the same, since the lock of a requeued job is its
own.  Configs are checked before anything is submitted; completed runs are not submitted again.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit

from launch.runner import TASK_LOG, RunOutcome, completed_damage, run_config
from runspec import RunSpec
from runspec.folder import results_root
from utils.schema import ConfigError

FOREVER_MIN = 60 * 24 * 365
ROOT = Path(__file__).resolve().parent.parent  # the project, importable in every task
SETUP = [f'export PYTHONPATH="{ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"']


class RunConfigs(submitit.helpers.Checkpointable):
    """A task: run these config files one after another (with ``env`` set, e.g. the GPU and threads)."""

    def __init__(self, configs: list[str], results: str | None, env: dict[str, str]) -> None:
        self.configs, self.results, self.env = configs, results, env

    def __call__(self) -> list[dict[str, Any]]:
        os.environ.update(self.env)  # before CUDA starts: CUDA_VISIBLE_DEVICES takes effect
        os.environ[TASK_LOG] = str(submitit.JobEnvironment().paths.stdout)  # recorded in status.json
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # the ranks of one run: torch.distributed's env://
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if "OMP_NUM_THREADS" in self.env:
            import torch

            torch.set_num_threads(int(self.env["OMP_NUM_THREADS"]))
        return [asdict(run_config(Path(c), results=self.results)) for c in self.configs]


@dataclass
class Plan:
    """What a launch submits: configs to run (with their run folders) and what was left out, and why."""

    todo: list[Path] = field(default_factory=list)
    completed: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plan(configs: list[Path], results: str | None, force: bool, restart: bool = False) -> Plan:
    """Check every config; with ``force`` delete the run folders of completed runs first, with ``restart``
    those of unfinished ones (the tasks then never delete anything, so a requeued task only resumes)."""
    out = Plan()
    for path in configs:
        try:
            spec = RunSpec.load(path)
        except ConfigError as exc:
            out.problems += [str(p) for p in exc.problems]
            continue
        folder = spec.folder(results_root(results, spec.config.general.output_dir))
        damage = completed_damage(folder)  # None: not completed; []: sound; else what its task repairs
        if damage == [] and not force:
            out.completed.append(path)
            continue
        if force or (restart and damage is None):
            shutil.rmtree(folder.path, ignore_errors=True)
        out.todo.append(path)
    return out


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def launch_local(todo: list[Path], results: str | None, *, workers: int, gpus: list[int] | None,
                 log: Callable[[str], None] = print) -> list[RunOutcome]:
    """Run ``todo`` on ``workers`` worker processes of this machine (worker i sees only GPU ``gpus[i]``;
    default: every visible GPU in turn, or the CPU) and wait for them; returns every outcome."""
    if gpus is None:
        import torch

        gpus = list(range(torch.cuda.device_count()))
    folder = results_root(results) / "launch" / time.strftime("%Y%m%d-%H%M%S")
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=FOREVER_MIN, setup=SETUP)
    groups = [todo[i::workers] for i in range(workers) if todo[i::workers]]
    jobs = []
    for i, group in enumerate(groups):
        env = {"CUDA_VISIBLE_DEVICES": str(gpus[i % len(gpus)]) if gpus else ""}
        if gpus:
            env["PAI_CUDA_INDEX"] = "0"  # the one visible device
        jobs.append(executor.submit(RunConfigs([str(p) for p in group], results, env)))
    log(f"{len(todo)} runs on {len(jobs)} local workers" + (f" (GPUs {gpus})" if gpus else " (CPU)")
        + f"; logs in {folder}")
    outcomes: list[RunOutcome] = []
    for job, group in zip(jobs, groups):
        try:
            outcomes += [RunOutcome(**o) for o in job.result()]
        except Exception as exc:  # noqa: BLE001 - a dead worker fails its runs, the others go on
            outcomes += [RunOutcome(str(p), "failed", reason=f"worker failed: {exc}") for p in group]
    return outcomes


@dataclass
class SlurmOptions:
    partition: str | None = None
    gpus_per_run: int = 0
    cpus_per_run: int = 1
    mem: str | None = None
    time: str = "4:00:00"
    max_parallel: int = 64
    runs_per_task: int = 1
    ranks_per_run: int | None = None  # default: one per GPU (DistributedDataParallel over them), else 1
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ranks(self) -> int:
        return self.ranks_per_run or max(self.gpus_per_run, 1)


def time_minutes(text: str) -> int:
    """Slurm's ``[D-]HH:MM:SS`` / ``MM`` time as minutes (at least 1)."""
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return max(int(days or 0) * 1440 + h * 60 + m + (1 if s else 0), 1)


def launch_slurm(todo: list[Path], results: str | None, options: SlurmOptions,
                 log: Callable[[str], None] = print) -> str:
    """Submit ``todo`` as one Slurm job array (``runs_per_task`` configs per task; each run on
    ``options.ranks`` processes, DistributedDataParallel when more than one); returns the job id."""
    root = results_root(results)
    folder = root / "slurm" / time.strftime("%Y%m%d-%H%M%S") / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params: dict[str, Any] = {
        "timeout_min": time_minutes(options.time), "slurm_array_parallelism": options.max_parallel,
        "cpus_per_task": options.cpus_per_run, "gpus_per_node": options.gpus_per_run, "tasks_per_node": options.ranks,
        "nodes": 1, "name": "pai", "slurm_setup": SETUP}
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.mem:
        params["slurm_mem"] = options.mem
    if options.extra:
        params["slurm_additional_parameters"] = dict(options.extra)
    executor.update_parameters(**params)
    env = {"OMP_NUM_THREADS": str(options.cpus_per_run)}
    tasks = [RunConfigs([str(p) for p in group], results, env) for group in chunks(todo, options.runs_per_task)]
    jobs = executor.submit_array(tasks)
    job_id = jobs[0].job_id.split("_")[0]
    logs = folder.parent
    log(f"submitted Slurm job array {job_id}: {len(todo)} runs in {len(tasks)} tasks"
        + (f" of {options.ranks} ranks each" if options.ranks > 1 else "") + f"; logs in {logs}")
    log(f"watch it with: squeue -j {job_id}   and   python main.py status {root}")
    return job_id
