"""One run across several processes (utils/distributed.py, engine/run.py): torchrun with 2 CPU ranks on
the gloo backend.  Without BatchNorm the 2-rank run with global batch B ends where a 1-process run with
batch B does; with BatchNorm it completes with the same mask on both ranks; killed with -9, it resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from runspec import RunSpec
from utils.distributed import shard
from utils.io import load_torch

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(cfg: Path, results: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "main.py"), "run", str(cfg), "--results", str(results)]
    return subprocess.Popen(cmd, cwd=cfg.parent, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its ranks in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_shards_of_the_ranks_make_up_each_global_batch() -> None:
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    parts = [shard(order, 6, r, 2) for r in range(2)]
    rebuilt = torch.cat([torch.cat([p[3 * i:3 * i + 3] for p in parts]) for i in range(3)])
    assert torch.equal(rebuilt, order[:18])  # each global batch = rank 0's half then rank 1's
    assert [len(p) for p in parts] == [9 + 3, 9 + 2]  # the last batch (5) split as evenly as possible
    assert torch.equal(shard(order, 6, 0, 1), order)


def test_two_ranks_without_batchnorm_match_one_process_with_the_global_batch(make_config, tmp_path: Path) -> None:
    # 1,436 training images: every global batch of 64 (the last has 28) splits into equal halves
    cfg = make_config(**{"model": {"class": "mlp", "options": {"hidden": [64]}}, "dataset.batch_size": 64,
                         "dataset.train4val": False, "dataset.options": {"test_fraction": 0.2006}})
    proc = _torchrun(cfg, tmp_path / "ddp")
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, out[-4000:]
    single = subprocess.run([sys.executable, str(ROOT / "main.py"), "run", str(cfg), "--results",
                             str(tmp_path / "one")], env=ENV, capture_output=True, text=True)
    assert single.returncode == 0, single.stdout
    spec = RunSpec.load(cfg)
    a = load_torch(spec.run_dir(tmp_path / "ddp") / "final_model.pt")
    b = load_torch(spec.run_dir(tmp_path / "one") / "final_model.pt")
    for k in b:
        assert float((a[k] - b[k]).norm() / b[k].norm()) < 1e-5, k
    res = json.loads((spec.run_dir(tmp_path / "ddp") / "results.json").read_text())
    assert res["world_size"] == 2 and res["masks_verified_on_ranks"] == 2
    assert out.count("1 completed") == 1  # rank 0 alone prints the summary


def test_two_ranks_with_batchnorm_complete_and_a_kill_dash_nine_resumes(make_config, tmp_path: Path) -> None:
    cfg = make_config(**{"training.num_steps": 30, "model.options": {"width": 16}, "dataset.batch_size": 32,
                         "training.sync_bn": True})
    folder = RunSpec.load(cfg).run_dir(tmp_path / "res")
    proc = _torchrun(cfg, tmp_path / "res")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads((folder / "history.json").read_text())) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    for pid in [proc.pid, *_descendants(proc.pid)]:  # torchrun and both ranks, at once
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert load_torch(folder / "checkpoint.pt")["epoch"] >= 2
    again = _torchrun(cfg, tmp_path / "res")
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out[-4000:]
    assert "training.sync_bn is ignored on the CPU" in out
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "completed" and status["resumed"] is True, (status, out)
    res = json.loads((folder / "results.json").read_text())
    assert res["world_size"] == 2 and res["masks_verified_on_ranks"] == 2 and res["epochs"] == 30


def test_the_device_loader_splits_batches_like_the_classic_sampler() -> None:
    from data.device_loader import DeviceLoader
    from data.loaders import EpochShuffler

    images, targets = torch.zeros(21, 1, 2, 2, dtype=torch.uint8), torch.arange(21)
    for rank in range(2):
        dev = DeviceLoader(images, targets, batch_size=8, device=torch.device("cpu"), mean=[0.0], std=[1.0],
                           train=True, seed=3)
        dev.shard(rank, 2)
        classic = EpochShuffler(21, 3, global_batch=8, rank=rank, world=2)
        dev.set_epoch(5)
        classic.set_epoch(5)
        assert torch.cat([y for _, y in dev]).tolist() == list(classic)
        assert len(dev) == 3 and dev.batch_size == 4
