"""Runs onto a Slurm cluster with submitit (``--launcher slurm``: one job array), and the plan every launcher
makes first (``--launcher local``, a pool of worker processes of this machine, is :mod:`launch.local`).

Every task runs its configs with :func:`launch.runner.run_config`, so run folders, locks, skipping and
resuming behave exactly as in a plain ``run``.  A Slurm task that times out or is preempted is requeued
by submitit (:class:`RunConfigs` is checkpointable) and resumes its run from the last checkpoint; a
task that is killed and requeued by Slurm itself does the same, since the lock of a requeued job is its
own.  Configs are checked before anything is submitted; completed runs are not submitted again.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit

from launch.runner import TASK_LOG, Overrides, completed_damage, run_config
from runspec import RunSpec
from runspec.folder import results_root
from utils.schema import ConfigError

FOREVER_MIN = 60 * 24 * 365
ROOT = Path(__file__).resolve().parent.parent  # the project, importable in every task
SETUP = [f'export PYTHONPATH="{ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"']


class RunConfigs(submitit.helpers.Checkpointable):
    """A task: run these config files one after another (with ``env`` set, e.g. the GPU and threads)."""

    def __init__(self, configs: list[str], results: str | None, env: dict[str, str],
                 overrides: Overrides = ()) -> None:
        self.configs, self.results, self.env = configs, results, env
        self.overrides = [tuple(o) for o in overrides]

    def __call__(self) -> list[dict[str, Any]]:
        os.environ.update(self.env)  # before CUDA starts: CUDA_VISIBLE_DEVICES takes effect
        os.environ[TASK_LOG] = str(submitit.JobEnvironment().paths.stdout)  # recorded in status.json
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # the ranks of one run: torch.distributed's env://
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if "OMP_NUM_THREADS" in self.env:
            import torch

            torch.set_num_threads(int(self.env["OMP_NUM_THREADS"]))
        overrides = getattr(self, "overrides", [])  # a task pickled by an earlier version has none
        return [asdict(run_config(Path(c), results=self.results, overrides=overrides)) for c in self.configs]


@dataclass
class Plan:
    """What a launch submits: configs to run (with their run folders) and what was left out, and why."""

    todo: list[Path] = field(default_factory=list)
    completed: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plan(configs: list[Path], results: str | None, force: bool, restart: bool = False,
         overrides: Overrides = ()) -> Plan:
    """Check every config; with ``force`` delete the run folders of completed runs first, with ``restart``
    those of unfinished ones (the tasks then never delete anything, so a requeued task only resumes)."""
    out = Plan()
    for path in configs:
        try:
            spec = RunSpec.load(path, overrides=overrides)
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


_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
MAX_TIME_MIN = 365 * 24 * 60


def time_minutes(text: str) -> int:
    """A Slurm time limit as whole minutes (seconds round up; at least 1).  Slurm's forms: ``MM``,
    ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.  Raises ValueError naming the valid forms."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"time limit {text!r} is not a Slurm time: use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
                         "D-HH:MM:SS (e.g. 4:00:00)")
    days, *parts = match.groups()
    numbers = [int(p) for p in parts if p is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        h, m, s = (numbers + [0, 0])[:3]
    elif len(numbers) == 3:
        h, m, s = numbers
    else:  # MM[:SS]
        h, (m, s) = 0, (numbers + [0])[:2]
    minutes = int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)
    if minutes > MAX_TIME_MIN:
        raise ValueError(f"time limit {text!r} is more than a year ({MAX_TIME_MIN} minutes)")
    return max(minutes, 1)


def launch_slurm(todo: list[Path], results: str | None, options: SlurmOptions,
                 log: Callable[[str], None] = print, overrides: Overrides = ()) -> str:
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
    tasks = [RunConfigs([str(p) for p in group], results, env, overrides)
             for group in chunks(todo, options.runs_per_task)]
    jobs = executor.submit_array(tasks)
    job_id = jobs[0].job_id.split("_")[0]
    logs = folder.parent
    log(f"submitted Slurm job array {job_id}: {len(todo)} runs in {len(tasks)} tasks"
        + (f" of {options.ranks} ranks each" if options.ranks > 1 else "") + f"; logs in {logs}")
    log(f"watch it with: squeue -j {job_id}   and   python main.py status {root}")
    return job_id
