"""Experiment trackers (engine/trackers.py) and watchable runs: TensorBoard event files hold the per-epoch
scalars (also after a resume), W&B / MLflow get the same numbers in their offline modes, a missing tracker
package is a config problem, progress lines appear off a terminal, and training.max_batches caps passes."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from helpers import interrupt_after
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launch.runner import run_config
from runspec import RunSpec
from utils.io import load_torch
from utils.schema import ConfigError


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_every_epoch_and_the_hparams(make_config, tmp_path: Path) -> None:
    out = run_config(make_config(**{"training.num_steps": 3}), results=tmp_path, log=lambda s: None)
    assert out.status == "completed"
    run = Path(out.run_dir)
    scalars = _scalars(run)
    history = json.loads((run / "history.json").read_text())
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["train_loss"] for r in history])
    assert [v for _, v in scalars["val/acc"]] == pytest.approx([r["val_acc"] for r in history])
    assert {"run/lr", "run/images_per_s", "run/density"} <= set(scalars)
    assert any(tag.startswith("layer_density/") for tag in scalars)
    assert list((run / "tensorboard" / "hparams").glob("events.out.tfevents.*"))  # the HParams view's record


def test_a_resumed_run_logs_each_epoch_once(make_config, tmp_path: Path) -> None:
    cfg = make_config(**{"training.num_steps": 4})
    interrupt_after(cfg, tmp_path, 2)
    out = run_config(cfg, results=tmp_path, log=lambda s: None)
    assert out.status == "completed"
    assert [s for s, _ in _scalars(Path(out.run_dir))["train/loss"]] == [1, 2, 3, 4]


class _FakeWandbRun:
    def __init__(self, calls: list) -> None:
        self.calls, self.summary = calls, {}

    def log(self, values: dict, step: int) -> None:
        self.calls.append(("log", step, values))

    def finish(self) -> None:
        self.calls.append(("finish",))


def test_wandb_and_mlflow_get_the_epochs_and_final_metrics_offline(make_config, tmp_path: Path, monkeypatch) -> None:
    calls: list = []
    wandb = types.ModuleType("wandb")
    run = _FakeWandbRun(calls)
    wandb.init = lambda **kw: calls.append(("init", kw)) or run
    mlflow = types.ModuleType("mlflow")
    mlflow.set_tracking_uri = lambda uri: calls.append(("uri", uri))
    mlflow.start_run = lambda run_name: calls.append(("start", run_name))
    mlflow.log_params = lambda params: calls.append(("params", params))
    mlflow.log_metrics = lambda metrics, step=None: calls.append(("metrics", step, metrics))
    mlflow.end_run = lambda: calls.append(("end",))
    for name, module in (("wandb", wandb), ("mlflow", mlflow)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    cfg = make_config(**{"training.num_steps": 2, "general.trackers": ["wandb", "mlflow"]})
    out = run_config(cfg, results=tmp_path, log=lambda s: None)
    assert out.status == "completed", out.reason
    init = next(c[1] for c in calls if c[0] == "init")
    assert init["mode"] == "offline" and init["dir"] == out.run_dir and init["config"]["training"]["num_steps"] == 2
    assert [c[1] for c in calls if c[0] == "log"] == [1, 2]
    assert run.summary["final_test_acc"] == pytest.approx(out.test_acc)
    assert next(c[1] for c in calls if c[0] == "uri") == (tmp_path / "mlruns").resolve().as_uri()
    params = next(c[1] for c in calls if c[0] == "params")
    assert params["criterion"] == "snip" and params["training.num_steps"] == 2
    assert [c[1] for c in calls if c[0] == "metrics"] == [1, 2, None]
    assert ("finish",) in calls and ("end",) in calls
    assert not (Path(out.run_dir) / "tensorboard").exists()  # only the trackers asked for


def test_a_tracker_without_its_package_is_a_config_problem(make_config, monkeypatch) -> None:
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(ConfigError) as err:
        RunSpec.load(make_config(**{"general.trackers": ["tensorboard", "mlflow"]}))
    (problem,) = err.value.problems
    assert problem.path == "general.trackers[1]" and "pip install mlflow" in problem.message


def test_progress_lines_off_a_terminal_show_epoch_step_rate_and_eta(make_config, tmp_path: Path, monkeypatch,
                                                                     capsys) -> None:
    monkeypatch.setenv("PAI_PROGRESS_SECONDS", "1e-9")  # a line after every batch
    cfg = make_config(**{"training.num_steps": 2, "training.compressor.class": "hutch_diag",
                         "training.compressor.options": {"probes": 2}})
    out = run_config(cfg, results=tmp_path)
    assert out.status == "completed"
    text = capsys.readouterr().out
    assert "epoch 1/2: 1/" in text and "batch/s" in text and "ETA" in text
    assert "scoring" in text and "Hutchinson, 2 probes per batch: 1/" in text


def test_max_batches_caps_every_pass_for_smoke_runs(make_config, tmp_path: Path) -> None:
    out = run_config(make_config(**{"training.num_steps": 3, "training.max_batches": 2}), results=tmp_path,
                     log=lambda s: None)
    assert out.status == "completed"
    ckpt = load_torch(Path(out.run_dir) / "checkpoint.pt")
    assert ckpt["state"]["step"] == 6 and ckpt["epoch"] == 3
    spec = RunSpec.load(make_config(**{"training.num_steps": 3}))
    assert RunSpec.load(make_config(**{"training.num_steps": 3, "training.max_batches": 2})).hash() != spec.hash()


def test_progress_lines_spell_their_units() -> None:
    """Issue 22.11: progress lines said "batchs"."""
    from utils.progress import LineProgress

    lines: list[str] = []
    bar = LineProgress(range(3), desc="train", total=3, unit="batch", every=1e-9, write=lines.append)
    list(bar)
    assert lines and "3/3 batches (100%)" in lines[-1] and "batchs" not in " ".join(lines)
    one = LineProgress(range(1), desc="x", total=None, unit="chunk", every=1, write=print)
    list(one)
    assert one.line(1.0).startswith("x: 1/1 chunk (100%), ")
