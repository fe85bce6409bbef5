"""Small helpers shared by test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.runner import run_config


def interrupt_after(config: Path, results: Path, epochs: int) -> None:
    """Run ``config`` into ``results`` and stop it like Ctrl-C once ``epochs`` epochs are complete."""

    def stop(done: int, row: dict) -> None:
        if done == epochs:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_config(config, results=results, log=lambda s: None, on_epoch_end=stop)
