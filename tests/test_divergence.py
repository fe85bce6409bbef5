"""Divergence is a failure: a run whose training loss or any weight or BN statistic becomes NaN / infinite,
or whose loss explodes (engine.hooks.DIVERGENCE_FACTOR), fails with TrainingDiverged naming the epoch and
the tensor, before the diverged state is checkpointed or kept as the best model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from engine import hooks
from engine.loop import TrainingDiverged
from launch.runner import run_config
from utils.io import load_torch

UNPRUNED = {"training.compressor.class": "none", "training.compressor.sparsity": 0.0}


def _failed_run(make_config, tmp_path: Path, lr: float) -> tuple[str, dict, Path]:
    cfg = make_config(**{"training.optimizer.learning_rate": lr, **UNPRUNED})
    out = run_config(cfg, results=tmp_path / "results", log=lambda s: None)
    assert out.status == "failed", f"lr {lr}: the run was {out.status}"
    run_dir = Path(out.run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["reason"] == out.reason
    assert out.reason.startswith("TrainingDiverged: ")
    # nothing of the diverged state is passed off as a result
    assert not (run_dir / "final_model.pt").exists() and not (run_dir / "results.json").exists()
    if (run_dir / "checkpoint.pt").exists():  # the diverged epoch never became a checkpoint
        assert load_torch(run_dir / "checkpoint.pt")["epoch"] == 0
    return out.reason, status, run_dir


def test_infinite_bn_statistics_with_a_finite_loss_fail_naming_epoch_and_tensor(make_config, tmp_path: Path) -> None:
    # at lr 1e3 the tiny run's loss stays finite (1e16) while BN running_var overflows to inf: it used to be
    # `completed`, with inf in final_model.pt
    reason, _, _ = _failed_run(make_config, tmp_path, 1e3)
    assert "epoch 1" in reason and "running_var" in reason


def test_a_finite_loss_explosion_fails(make_config, tmp_path: Path) -> None:
    # at lr 100 every tensor stays finite but the first epoch's mean loss is ~3e8 (a uniform guess: ln 10)
    reason, _, _ = _failed_run(make_config, tmp_path, 100.0)
    assert "epoch 1" in reason and "train_loss" in reason


def test_a_nan_loss_inside_an_epoch_names_the_epoch(make_config, tmp_path: Path) -> None:
    reason, _, _ = _failed_run(make_config, tmp_path, 1e5)
    assert "epoch 1/" in reason and "training loss" in reason


def _fake_run(history: list[dict], model: nn.Module | None = None) -> SimpleNamespace:
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 10))
    return SimpleNamespace(model=model, state=SimpleNamespace(history=history), num_classes=10)


def _end(epoch: int, train_loss: float) -> hooks.EpochEnd:
    return hooks.EpochEnd(epoch, validate=True, track_best=False, row={"train_loss": train_loss})


def test_a_loss_explosion_relative_to_the_first_epoch_fails_in_a_later_epoch() -> None:
    run = _fake_run([{"epoch": 1, "train_loss": 3.0}, {"epoch": 2, "train_loss": 1.0}])
    hooks.check_divergence(run, _end(3, 3.0 * hooks.DIVERGENCE_FACTOR * 0.99))  # below the threshold: fine
    with pytest.raises(TrainingDiverged, match=r"epoch 3: train_loss .* first epoch"):
        hooks.check_divergence(run, _end(3, 3.0 * hooks.DIVERGENCE_FACTOR * 1.01))


def test_the_first_epoch_is_measured_against_a_uniform_guess() -> None:
    run = _fake_run([])
    hooks.check_divergence(run, _end(1, math.log(10) * 100))  # a bad first epoch is not a divergence
    with pytest.raises(TrainingDiverged, match="epoch 1: train_loss"):
        hooks.check_divergence(run, _end(1, math.log(10) * hooks.DIVERGENCE_FACTOR * 1.01))


@pytest.mark.parametrize("name", ["0.weight", "1.running_var", "1.running_mean", "2.bias"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_weight_or_buffer_is_named(name: str, bad: float) -> None:
    run = _fake_run([{"epoch": 1, "train_loss": 2.0}])
    hooks.check_divergence(run, _end(2, 1.0))  # healthy: nothing raised
    run.model.state_dict()[name].view(-1)[1] = bad
    with pytest.raises(TrainingDiverged, match=rf"epoch 2: {name.replace('.', '[.]')} ") as err:
        hooks.check_divergence(run, _end(2, 1.0))
    assert "1 of " in str(err.value)


def test_finite_values_whose_sum_overflows_are_not_a_divergence() -> None:
    run = _fake_run([{"epoch": 1, "train_loss": 2.0}])
    with torch.no_grad():
        run.model[0].weight.fill_(3e38)  # every value finite, their float32 sum is inf
    assert not torch.isfinite(run.model[0].weight.sum())
    hooks.check_divergence(run, _end(2, 1.0))
    with torch.no_grad():
        run.model[0].weight[2, 1] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"epoch 2: 0[.]weight is not finite \(1 NaN of 16 values\)"):
        hooks.check_divergence(run, _end(2, 1.0))


def test_a_non_finite_train_loss_in_the_row_fails() -> None:
    run = _fake_run([])
    with pytest.raises(TrainingDiverged, match="epoch 1: train_loss"):
        hooks.check_divergence(run, _end(1, float("nan")))


def test_the_check_runs_before_the_diverged_state_is_kept_or_checkpointed() -> None:
    order = list(hooks.DEFAULT)
    at = order.index(hooks.check_divergence)
    assert order.index(hooks.count_epoch) < at < order.index(hooks.keep_best) < order.index(hooks.checkpoint)
    assert hooks.check_divergence in hooks.default_hooks()
