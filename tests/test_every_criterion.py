"""Every registered pruning criterion in every experiment (issue 20, item 1: "usable from JSON in every
experiment (pbt, early, irp where it makes sense, structured where its scores are per weight)").

One tiny digits run per (criterion, experiment), round counts cut to 3 where a criterion has rounds, so that
the whole matrix stays cheap; each run must complete with exactly the kept count its sparsity asks for, or
(structured) be refused at validation with a message that names the field.  ``autosparse`` needs a
trained predictor file and is covered end to end by tests/test_autosparse.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import compressors
from launch.runner import run_config
from runspec import RunSpec
from utils.schema import ConfigError

CRITERIA = [n for n in compressors.pruning_criteria() if n != "autosparse"]
SPARSITY = 0.8
BASE: dict[str, Any] = {
    "general": {"id": "every", "experiment": "pbt", "seed": 0, "gpu": {"ngpus": 0, "gpu_id": 0}},
    "dataset": {"class": "digits", "batch_size": 128, "train4val": False, "options": {"test_fraction": 0.7}},
    "model": {"class": "digits_cnn", "options": {"width": 8}},
    "training": {"num_steps": 1, "max_batches": 2,
                 "optimizer": {"class": "sgd", "learning_rate": 0.05, "kwargs": {"momentum": 0.9}},
                 "compressor": {"class": "snip", "sparsity": SPARSITY, "batch_size": 10, "per_class_samples": 2}},
}
EXPERIMENTS = {
    "pbt": {},
    "early": {"training.num_steps": 2, "training.early": {"prune_epoch": 1}},
    "irp": {"general.experiment": "irp", "training.irp": {"iterations": 2, "epochs_per_iteration": 1,
                                                           "final_epochs": 1}},
}


def _options(name: str) -> dict[str, Any]:
    """Cheap options: 3 rounds where the criterion has rounds (its own default otherwise)."""
    fields = set(compressors.build(name).options_dict())
    return {"rounds": 3} if "rounds" in fields else {}


def _config(tmp_path: Path, name: str, experiment: str) -> Path:
    cfg = copy.deepcopy(BASE)
    cfg["training"]["compressor"].update({"class": name, "options": _options(name)})
    overrides = {**EXPERIMENTS[experiment]}
    if experiment != "pbt":
        cfg["general"]["experiment"] = experiment
    for dotted, value in overrides.items():
        node = cfg
        *head, last = dotted.split(".")
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / f"{name}-{experiment}.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
@pytest.mark.parametrize("name", CRITERIA)
def test_every_criterion_runs_in_every_experiment_with_the_exact_kept_count(tmp_path: Path, name: str,
                                                                          experiment: str) -> None:
    torch.set_num_threads(1)
    out = run_config(_config(tmp_path, name, experiment), results=tmp_path / "res", log=lambda s: None)
    assert out.status == "completed", out.reason
    masks = torch.load(Path(out.run_dir) / "mask.pt", weights_only=True)
    scored = RunSpec.load(_config(tmp_path, name, experiment))
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == compressors.kept_count(total, SPARSITY, scored.config.training.compressor.kept_count), \
        (name, experiment, kept, total)


@pytest.mark.parametrize("name", CRITERIA)
def test_structured_pruning_runs_or_is_refused_naming_the_field(tmp_path: Path, name: str) -> None:
    cfg = copy.deepcopy(BASE)
    cfg["training"]["compressor"].update({"class": name, "options": _options(name), "structure": "channel",
                                          "sparsity": 0.5})
    path = tmp_path / f"{name}-structured.json"
    path.write_text(json.dumps(cfg))
    try:
        RunSpec.load(path, build=True)
    except ConfigError as exc:
        text = str(exc)
        assert "training.compressor" in text and "valid" in text, text
        return
    out = run_config(path, results=tmp_path / "res", log=lambda s: None)
    assert out.status == "completed", out.reason
    record = json.loads((Path(out.run_dir) / "results.json").read_text())["structures"]
    assert record["structures_kept"] == round(0.5 * record["structures_total"])
