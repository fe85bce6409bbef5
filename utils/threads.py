"""Intra-op thread control for small CPU work."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run memory-bound element-wise work in one thread on the CPU (no-op elsewhere).

    Such work loses little bandwidth single-threaded, and on a busy machine each OpenMP region can
    otherwise stall for a scheduler time slice (measured: the mask enforcement of ResNet18 took a
    median 260 ms with 2 threads vs 23 ms with 1 on 2 shared cores; batch preparation ~100 ms).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
