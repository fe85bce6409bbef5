"""Trainer guarantees: masks enforced through training, BN warmup touches only BN statistics,
scoring leaves the model untouched, exact resume after interruption (in-process and kill -9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import interrupt_after
from torch import nn

import compressors
from engine.loop import MaskEnforcer, bn_warmup, train_epoch
from launch.runner import run_config
from runspec.config import OptimizerConfig, OptimizerKwargs
from runspec.training import build_optimizer
from utils.io import load_torch

ROOT = Path(__file__).resolve().parent.parent


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 3))


def _data(n: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


@pytest.mark.parametrize("opt", [
    OptimizerConfig(name="sgd", learning_rate=0.1, kwargs=OptimizerKwargs(momentum=0.9, nesterov=True, w_decay=0.1)),
    OptimizerConfig(name="adamw", learning_rate=0.01, kwargs=OptimizerKwargs(w_decay=0.5)),
    OptimizerConfig(name="adam", learning_rate=0.01, kwargs=OptimizerKwargs(w_decay=0.5)),
])
def test_pruned_weights_stay_exactly_zero_through_training(opt: OptimizerConfig) -> None:
    model = _net()
    names = compressors.prunable_names(model)
    masks = compressors.select(compressors.build("random", seed=3).score(model), 0.7)
    enforcer = MaskEnforcer(model, masks)
    enforcer.apply_to_weights()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, opt)
    for _ in range(3):
        train_epoch(model, _data(), nn.CrossEntropyLoss(), optimizer, torch.device("cpu"), enforcer, grad_clip=1.0)
    params = dict(model.named_parameters())
    for n in names:
        pruned = ~masks[n].bool()
        assert pruned.any()
        assert torch.count_nonzero(params[n].detach()[pruned]) == 0  # exactly zero, not just small
        assert not torch.equal(params[n].detach()[~pruned], before[n][~pruned])  # the rest trained
        state = optimizer.state[params[n]]
        for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            if key in state:
                assert torch.count_nonzero(state[key][pruned]) == 0


def test_without_the_enforcer_weight_decay_would_revive_nothing_but_momentum_moves_them() -> None:
    """Control: the test above can fail - training without the mask moves the pruned weights."""
    model = _net()
    masks = compressors.select(compressors.build("random", seed=3).score(model), 0.7)
    MaskEnforcer(model, masks).apply_to_weights()
    optimizer = build_optimizer(model, OptimizerConfig(name="sgd", learning_rate=0.1))
    train_epoch(model, _data(), nn.CrossEntropyLoss(), optimizer, torch.device("cpu"), None)
    w = dict(model.named_parameters())["0.weight"].detach()
    assert torch.count_nonzero(w[~masks["0.weight"].bool()]) > 0


def test_bn_warmup_changes_only_batchnorm_statistics() -> None:
    model = _net()
    model.eval()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    bn_warmup(model, _data(), passes=2, device=torch.device("cpu"))
    assert all(torch.equal(params[n], p) for n, p in model.named_parameters())
    assert not torch.equal(buffers["1.running_mean"], model[1].running_mean)
    assert not torch.equal(buffers["1.running_var"], model[1].running_var)
    assert int(model[1].num_batches_tracked) == 8
    assert not model.training and not model[1].training  # mode restored


def test_scoring_leaves_the_model_untouched() -> None:
    model = _net()
    model.train()
    model[4].weight.grad = torch.ones_like(model[4].weight)
    model[0].weight.requires_grad_(False)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    scores = compressors.build("snip").score(model, _data(), nn.CrossEntropyLoss())
    assert set(scores) == {"0.weight", "4.weight"}
    assert model.training and model[1].training
    assert torch.equal(model[4].weight.grad, torch.ones_like(model[4].weight)) and model[0].weight.grad is None
    assert not model[0].weight.requires_grad
    assert all(torch.equal(params[n], p) for n, p in model.named_parameters())
    assert all(torch.equal(buffers[n], b) for n, b in model.named_buffers())
    assert sum(float(s.sum()) for s in scores.values()) == pytest.approx(1.0)  # SNIP is normalised


def _final_weights(run_dir: str) -> dict[str, torch.Tensor]:
    return load_torch(Path(run_dir) / "final_model.pt")


def test_interrupted_run_resumes_to_identical_weights(make_config, tmp_path: Path) -> None:
    cfg = make_config(**{"training.num_steps": 4, "training.optimizer.kwargs.scheduler": "cosine",
                         "training.optimizer.kwargs.lr_drops": []})
    reference = run_config(cfg, results=tmp_path / "a", log=lambda s: None)
    assert reference.status == "completed"

    interrupt_after(cfg, tmp_path / "b", 2)
    run_folder = Path(reference.run_dir.replace(str(tmp_path / "a"), str(tmp_path / "b")))
    assert json.loads((run_folder / "status.json").read_text())["status"] == "interrupted"
    assert load_torch(run_folder / "checkpoint.pt")["epoch"] == 2
    resumed = run_config(cfg, results=tmp_path / "b", log=lambda s: None)
    assert resumed.status == "completed" and resumed.run_dir == str(run_folder)
    assert json.loads((run_folder / "status.json").read_text())["resumed"] is True
    a, b = _final_weights(reference.run_dir), _final_weights(resumed.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.test_acc == reference.test_acc
    hist_a = json.loads((Path(reference.run_dir) / "history.json").read_text())
    hist_b = json.loads((run_folder / "history.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_s")} for r in rows]
    assert strip(hist_a) == strip(hist_b)


KILL_CASES = {  # 12 training epochs each
    "pbt": {},
    "irp": {"general.experiment": "irp", "training.compressor.class": "magnitude",
            "training.irp": {"iterations": 3, "epochs_per_iteration": 3, "final_epochs": 3, "rewind_epoch": 1}},
    "pat": {"general.experiment": "pat", "training.num_steps": 6, "training.pat": {"finetune_epochs": 6}},
    "early": {"general.experiment": "early", "training.early": {"prune_epoch": 2.5}},
}


@pytest.mark.parametrize("experiment", list(KILL_CASES))
def test_kill_dash_nine_then_rerun_ends_with_the_same_weights(experiment: str, make_config, tmp_path: Path) -> None:
    cfg = make_config(**{"training.num_steps": 12, "model.options": {"width": 16},
                         "training.optimizer.kwargs.lr_drops": [6], **KILL_CASES[experiment]})
    results = tmp_path / "killed"
    # bit-exact equality needs the same intra-op thread count as this process (tests run single-threaded)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "run", str(cfg), "--results", str(results)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=env)
    deadline = time.time() + 120
    history = None
    while time.time() < deadline and proc.poll() is None:
        found = list(results.rglob("history.json"))
        if found:
            history = found[0]
            try:
                if len(json.loads(history.read_text())) >= 3:
                    break
            except json.JSONDecodeError:
                pytest.fail("history.json was observed half-written: writes are not atomic")
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_folder = history.parent
    status = json.loads((run_folder / "status.json").read_text())
    assert status["status"] == "running"  # kill -9 leaves no chance to write anything
    ckpt = load_torch(run_folder / "checkpoint.pt")
    assert 3 <= ckpt["epoch"] < 12 and ckpt["experiment"] == experiment
    resumed = run_config(cfg, results=results, log=lambda s: None)
    assert resumed.status == "completed"
    reference = run_config(cfg, results=tmp_path / "reference", log=lambda s: None)
    a, b = _final_weights(reference.run_dir), _final_weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_diverging_training_is_recorded_as_failed(make_config, tmp_path: Path) -> None:
    cfg = make_config(**{"training.optimizer.learning_rate": 1e12, "training.compressor.class": "none",
                         "training.compressor.sparsity": 0.0})
    out = run_config(cfg, results=tmp_path, log=lambda s: None)
    assert out.status == "failed" and "TrainingDiverged" in out.reason
    status = json.loads((Path(out.run_dir) / "status.json").read_text())
    assert status["status"] == "failed" and "Traceback" in status["traceback"]


def test_sigterm_marks_the_run_interrupted_and_a_rerun_resumes(make_config, tmp_path: Path) -> None:
    cfg = make_config(**{"training.num_steps": 40, "model.options": {"width": 16}})
    results = tmp_path / "preempted"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "run", str(cfg), "--results", str(results)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(results.rglob("history.json")):
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)  # what a cluster scheduler sends before preempting a job
    assert proc.wait(timeout=60) == 130
    (status_file,) = results.rglob("status.json")
    status = json.loads(status_file.read_text())
    assert status["status"] == "interrupted" and "rerun to resume" in status["reason"]
    assert 1 <= load_torch(status_file.parent / "checkpoint.pt")["epoch"] < 40


def test_a_foreign_or_old_checkpoint_is_refused_naming_the_file(make_config, tmp_path: Path) -> None:
    from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    cfg = make_config(**{"training.num_steps": 3})
    interrupt_after(cfg, tmp_path, 1)
    (ckpt_path,) = tmp_path.rglob("checkpoint.pt")
    torch.save({"epoch": 1, "model": {}}, ckpt_path)  # the unversioned format of earlier versions
    out = run_config(cfg, results=tmp_path, log=lambda s: None)
    assert out.status == "failed" and "CheckpointError" in out.reason and str(ckpt_path) in out.reason
    assert "not a 'pai-checkpoint' file" in out.reason and "--restart" in out.reason
    save_checkpoint(tmp_path / "v.pt", {"stage": 0}, experiment="pbt", run_hash="abc")
    assert load_checkpoint(tmp_path / "v.pt", experiment="pbt", run_hash="abc")["stage"] == 0
    with pytest.raises(CheckpointError, match="not by 'irp' for run abc"):
        load_checkpoint(tmp_path / "v.pt", experiment="irp", run_hash="abc")
    torch.save({"format": "pai-checkpoint", "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99, this version reads 2"):
        load_checkpoint(tmp_path / "future.pt", experiment="pbt", run_hash="abc")


# ------------------------------------------------------------------------------- damaged checkpoints
def _interrupted_copy(make_config, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(config, reference run folder, run folder interrupted after 2 of 3 epochs)."""
    cfg = make_config(**{"training.num_steps": 3})
    reference = run_config(cfg, results=tmp_path / "a", log=lambda s: None)
    interrupt_after(cfg, tmp_path / "b", 2)
    return cfg, Path(reference.run_dir), Path(reference.run_dir.replace(str(tmp_path / "a"), str(tmp_path / "b")))


def test_a_damaged_checkpoint_falls_back_to_the_previous_one_and_ends_identical(make_config, tmp_path: Path) -> None:
    from helpers import flip_tensor_byte

    cfg, reference, folder = _interrupted_copy(make_config, tmp_path)
    assert load_torch(folder / "checkpoint.prev.pt")["epoch"] == 1
    flip_tensor_byte(folder / "checkpoint.pt")  # torch would load it: a silently wrong resume without the digest
    lines: list[str] = []
    resumed = run_config(cfg, results=tmp_path / "b", log=lines.append)
    assert resumed.status == "completed", resumed.reason
    status = json.loads((folder / "status.json").read_text())
    (note,) = status["notes"]
    assert "checkpoint.pt: content digest mismatch" in note and "resumed from checkpoint.prev.pt (epoch 1)" in note
    assert any("damaged checkpoint" in line for line in lines) and (folder / "checkpoint.pt.damaged").exists()
    a, b = _final_weights(str(reference)), _final_weights(str(folder))
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed exactly, from one epoch earlier
    assert not (folder / "checkpoint.prev.pt").exists()  # a completed run keeps no fallback


def test_empty_and_truncated_checkpoints_start_the_run_over_with_the_reason_noted(make_config, tmp_path: Path) -> None:
    from helpers import truncate

    cfg, reference, folder = _interrupted_copy(make_config, tmp_path)
    (folder / "checkpoint.pt").write_bytes(b"")
    truncate(folder / "checkpoint.prev.pt")
    resumed = run_config(cfg, results=tmp_path / "b", log=lambda s: None)
    assert resumed.status == "completed", resumed.reason
    (note,) = json.loads((folder / "status.json").read_text())["notes"]
    assert "checkpoint.pt: empty file" in note and "checkpoint.prev.pt: no content digest" in note
    assert "the run starts over" in note
    a, b = _final_weights(str(reference)), _final_weights(str(folder))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_scores_that_are_not_finite_fail_the_run_before_any_mask_is_chosen(make_config, tmp_path: Path,
                                                                        monkeypatch) -> None:
    (tmp_path / "nan_lab.py").write_text(
        "import torch\nfrom compressors.base import Compressor\n\n"
        "class NaNScores(Compressor):\n    needs_data = False\n\n"
        "    def compute(self, model, names, mask_loader, loss_fn, sparsity):\n"
        "        params = dict(model.named_parameters())\n"
        "        return {n: torch.full_like(params[n], float('nan')) for n in names}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PAI_ALLOW_MODULES", "nan_lab")
    out = run_config(make_config(**{"training.compressor.class": "nan_lab:NaNScores"}), results=tmp_path / "r",
                     log=lambda s: None)
    assert out.status == "failed"
    assert "gave scores that are not finite in 3 of 3 tensors: 0.weight (72 NaN" in out.reason
    assert not (Path(out.run_dir) / "mask.pt").exists() and not list((tmp_path / "r" / "score_cache").glob("*.pt"))


# ------------------------------------------------------------------- composition root and end-of-epoch hooks
def test_assemble_builds_the_run_at_its_seeded_initialisation(make_config, tmp_path: Path) -> None:
    from engine import hooks
    from engine.assemble import assemble, build_loaders, initial_model
    from runspec import RunSpec

    spec = RunSpec.load(make_config(**{"training.compressor.prune_classifier": True}))
    folder = spec.folder(tmp_path)
    folder.path.mkdir(parents=True)
    run = assemble(spec, folder, log=lambda s: None)
    assert {"config.json", "environment.json", "mask_indices.json"} <= {p.name for p in folder.path.iterdir()}
    loaders = build_loaders(spec.config, torch.device("cpu"))
    reference = initial_model(spec.config, loaders.num_classes, loaders.input_shape)
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(), reference.state_dict().values()))
    assert run.scored == compressors.prunable_names(reference, include_classifier=True)
    assert all(bool(m.all()) for m in run.masks.values()) and run.density() == 1.0
    assert run.hooks == list(hooks.DEFAULT) and run.steps_per_epoch == len(loaders.train)
    fresh = run.make_model()  # the reinit ablation's network: same architecture, its own draw
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in run.model.parameters()]


def test_an_experiment_extends_the_end_of_epoch_hooks(make_config, tmp_path: Path) -> None:
    import dataclasses

    from engine import execute, hooks
    from runspec import RunSpec
    from trainers.pbt import PruneBeforeTraining

    seen = []

    class WithNorm(PruneBeforeTraining):
        def hooks(self, run, default):
            def weight_norm(run, end) -> None:  # before the history row is stored: it lands in history.json
                end.row["weight_norm"] = float(sum(p.detach().norm() for p in run.model.parameters()))

            def last(run, end) -> None:
                seen.append((end.epoch, end.validate, "weight_norm" in run.state.history[-1]))

            at = default.index(hooks.append_history)
            return [*default[:at], weight_norm, *default[at:], last]

    spec = RunSpec.load(make_config(**{"training.num_steps": 2, "validation.frequency": 2}))
    plain = spec.folder(tmp_path / "plain")
    plain.path.mkdir(parents=True)
    reference = execute(spec, plain, log=lambda s: None)
    folder = spec.folder(tmp_path / "hooked")
    folder.path.mkdir(parents=True)
    results = execute(dataclasses.replace(spec, experiment=WithNorm), folder, log=lambda s: None)
    assert seen == [(1, False, True), (2, True, True)]
    history = json.loads((folder.path / "history.json").read_text())
    assert [round(r["weight_norm"], 3) > 0 for r in history] == [True, True]
    assert results["final_test_acc"] == reference["final_test_acc"]  # an observing hook changes nothing
    assert load_torch(folder.path / "checkpoint.pt")["state"]["history"][-1]["weight_norm"] == history[-1][
        "weight_norm"]
