"""Shared fixtures: a tiny, fast digits config written to a temporary folder."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

TINY: dict[str, Any] = {
    "general": {"id": "tiny", "experiment": "pbt", "seed": 0, "gpu": {"ngpus": 0, "gpu_id": 0}},
    "dataset": {"class": "digits", "batch_size": 128, "num_workers": 0, "train4val": True},
    "model": {"class": "digits_cnn", "options": {"width": 8}},
    "training": {
        "num_steps": 3,
        "criterion": {"class": "CE", "kwargs": {}},
        "optimizer": {"class": "sgd", "learning_rate": 0.05,
                      "kwargs": {"momentum": 0.9, "w_decay": 0.0005, "scheduler": "step", "lr_drops": [2],
                                 "lr_drop_factor": 0.5}},
        "compressor": {"class": "snip", "mask": "global", "sparsity": 0.8, "warmup": 1, "batch_size": 10,
                       "per_class_samples": 5},
    },
    "validation": {"metric": "acc", "frequency": 1},
}


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny test models are fastest single-threaded (OpenMP stalls on a busy 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """make_config("name", **{"training.num_steps": 2}) -> path of a JSON config in tmp_path/configs."""

    def make(name: str = "tiny", folder: str = "configs", **overrides: Any) -> Path:
        cfg = copy.deepcopy(TINY)
        for dotted, value in overrides.items():
            _set(cfg, dotted, value)
        path = tmp_path / folder / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cfg, indent=1))
        return path

    return make
