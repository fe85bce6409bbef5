"""One run across several processes (torchrun, or a Slurm task with several GPUs): who this process is,
the process group, and how a global batch is split between the ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local`` on its node."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """The process that writes the run folder and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def from_environment() -> Rank:
    """The rank set by torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a single process otherwise."""
    env = os.environ
    return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init(rank: Rank, device_type: str) -> None:
    """Join the process group (NCCL on CUDA, gloo on the CPU) once."""
    if rank.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def barrier(rank: Rank) -> None:
    if rank.distributed and dist.is_initialized():
        dist.barrier()


def all_sum(rank: Rank, values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over every rank."""
    if not rank.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def same_on_every_rank(rank: Rank, tensors: list[torch.Tensor], device: torch.device) -> bool:
    """Do all ranks hold the same ``tensors``?  (Compares a checksum of each, position-weighted.)"""
    if not rank.distributed:
        return True
    sums = []
    for t in tensors:
        flat = t.detach().reshape(-1).double()
        sums += [float(flat.sum()), float((flat * torch.arange(1, flat.numel() + 1, device=flat.device)).sum())]
    mine = torch.tensor(sums, dtype=torch.float64, device=device)
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def shard(order: torch.Tensor, global_batch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's part of an epoch's sample ``order``: of every global batch of ``global_batch`` samples,
    slice ``rank`` of ``world`` equal slices (the last, smaller batch split as evenly as possible, and
    left out when it has fewer samples than ranks)."""
    if world == 1:
        return order
    batches = list(torch.split(order, global_batch))
    if batches and batches[-1].numel() < world:
        batches.pop()
    return torch.cat([torch.tensor_split(b, world)[rank] for b in batches]) if batches else order[:0]
