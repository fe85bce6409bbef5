"""Iterative rewind pruning and pruning after training: the density schedules reach exactly the
target, pruned weights never come back, rewinding restores theta0 exactly, surviving scores count the
pruning steps survived, the AutoSparse dataset round-trips, and irp / pat run end to end (with an
interrupted irp run resuming to the same result)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import interrupt_after
from torch import nn

import compressors
from autosparse.dataset import DatasetFormatError, build_dataset, load_dataset, save_dataset
from compressors import select_remaining as prune_step
from compressors import sparsity_schedule
from engine import rewind
from launch.runner import run_config
from utils.io import load_torch

IRP: dict[str, Any] = {
    "general": {"id": "irp_tiny", "experiment": "irp", "seed": 0, "gpu": {"ngpus": 0, "gpu_id": 0}},
    "dataset": {"class": "digits", "batch_size": 128, "train4val": False, "options": {"test_fraction": 0.7}},
    "model": {"class": "digits_cnn", "options": {"width": 8}},
    "training": {"num_steps": 1,
                 "optimizer": {"class": "sgd", "learning_rate": 0.05, "kwargs": {"momentum": 0.9}},
                 "compressor": {"class": "magnitude", "sparsity": 0.9, "warmup": 1, "batch_size": 10,
                                "per_class_samples": 3},
                 "irp": {"iterations": 3, "epochs_per_iteration": 1, "final_epochs": 1}},
}



def _write(folder: Path, name: str, cfg: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


# ------------------------------------------------------------------------------------------ schedules
def test_geometric_schedule_values_and_exact_target() -> None:
    s = sparsity_schedule(0.875, 3, "geometric")  # d = 1/8: densities 1/2, 1/4, 1/8
    assert s == pytest.approx([0.5, 0.75, 0.875], abs=1e-12)
    assert s[-1] == 0.875  # exactly the target, not a rounded power
    assert sparsity_schedule(0.98, 1) == [0.98]
    d = 0.02
    assert sparsity_schedule(0.98, 20) == pytest.approx([1 - d ** (i / 20) for i in range(1, 21)], abs=1e-12)


def test_equal_schedule_values() -> None:
    assert sparsity_schedule(0.9, 3, "equal") == pytest.approx([0.3, 0.6, 0.9], abs=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        sparsity_schedule(0.9, 3, "linear")


@pytest.mark.parametrize("schedule,scope", [("geometric", "global"), ("equal", "global"), ("geometric", "layer")])
def test_iterated_pruning_keeps_exact_counts_and_never_revives(schedule: str, scope: str) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = {"a": (37, 11), "b": (5, 3, 3, 3), "c": (300,)}
    masks = {n: torch.ones(s) for n, s in shapes.items()}
    total = sum(m.numel() for m in masks.values())
    target = 0.93
    sched = sparsity_schedule(target, 4, schedule)
    for i, s in enumerate(sched, 1):
        scores = {n: torch.rand(sh, generator=gen) for n, sh in shapes.items()}  # fresh scores every time
        new = prune_step(scores, masks, s, scope)
        for n in shapes:
            assert bool((new[n] <= masks[n]).all()), "a pruned weight came back"
        if scope == "global":
            expected = round((1 - s) * total)
            if schedule == "geometric" and i < 4:
                expected = round((1 - target) ** (i / 4) * total)
            assert int(sum(m.sum() for m in new.values())) == expected
        else:
            for m in new.values():
                assert int(m.sum()) == round((1 - s) * m.numel())
        masks = new
    if scope == "global":
        assert int(sum(m.sum() for m in masks.values())) == round(0.07 * total)  # exactly the target


def test_equal_schedule_removes_equal_counts() -> None:
    masks = {"w": torch.ones(1000)}
    kept = []
    for s in sparsity_schedule(0.9, 3, "equal"):
        masks = prune_step({"w": torch.arange(1000.0)}, masks, s)
        kept.append(int(masks["w"].sum()))
    assert kept == [700, 400, 100]


def test_surviving_scores_on_a_hand_made_three_iteration_case() -> None:
    """8 weights, target density 1/8 in 3 geometric steps (4, 2, 1 kept).  The scores change between
    iterations and favour already pruned weights, which must stay pruned."""
    per_iteration = [
        torch.tensor([0., 1, 2, 3, 4, 5, 6, 7]),        # keep 4..7
        torch.tensor([9., 9, 9, 9, 1, 3, 2, 4]),         # 0..3 are pruned already; keep 5 and 7
        torch.tensor([9., 9, 9, 9, 9, 5, 9, 1]),         # keep 5
    ]
    masks = {"w": torch.ones(8)}
    survivors = torch.zeros(8, dtype=torch.int16)
    for s, scores in zip(sparsity_schedule(0.875, 3), per_iteration):
        masks = prune_step({"w": scores}, masks, s)
        survivors += masks["w"].to(torch.int16)
    assert survivors.tolist() == [0, 0, 0, 0, 1, 3, 1, 2]


# ------------------------------------------------------------------------------------------ rewinding
def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))


@pytest.mark.parametrize("reset", [True, False])
def test_rewind_restores_survivors_to_theta0_and_keeps_pruned_zero(reset: bool) -> None:
    model = _net()
    theta0 = copy.deepcopy(model.state_dict())
    masks = compressors.select(compressors.build("random", seed=1).score(model), 0.6)
    with torch.no_grad():  # "training": every parameter and BN statistic moves
        for p in model.parameters():
            p.add_(1.0)
        model(torch.randn(8, 1, 8, 8))
    model.train()
    model(torch.randn(8, 1, 8, 8))
    trained = copy.deepcopy(model.state_dict())
    rewind(model, theta0, masks, everything=reset)
    state = model.state_dict()
    for n, m in masks.items():
        keep = m.bool()
        assert torch.equal(state[n][keep], theta0[n][keep])  # exactly theta0
        assert torch.count_nonzero(state[n][~keep]) == 0
    others = [k for k in state if k not in masks and not k.endswith("num_batches_tracked")]
    assert others  # BN weight/bias/statistics, biases, the classifier
    for k in others:
        assert torch.equal(state[k], theta0[k] if reset else trained[k]), k


# ------------------------------------------------------------------------------------- dataset format
def test_dataset_round_trips_with_weights_only(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    t0 = {"a": torch.randn(4, 3, generator=g), "b": torch.randn(7, generator=g)}
    g0 = {n: torch.randn(v.shape, generator=g) for n, v in t0.items()}
    sc = {"a": torch.randint(0, 4, (4, 3), generator=g), "b": torch.randint(0, 4, (7,), generator=g)}
    ds = build_dataset(["a", "b"], t0, g0, sc, iterations=3, model="m", seed=5)
    save_dataset(tmp_path / "autos_dataset.pt", ds)
    raw = torch.load(tmp_path / "autos_dataset.pt", weights_only=True)
    back = load_dataset(tmp_path / "autos_dataset.pt")
    for blob in (raw, back):
        assert blob["format"] == "autosparse-dataset" and blob["version"] == 2 and blob["iterations"] == 3
        assert blob["seed"] == 5 and [t["name"] for t in blob["tensors"]] == ["a", "b"]
        for t in blob["tensors"]:
            n = t["name"]
            assert t["shape"] == list(t0[n].shape)
            assert torch.equal(t["theta0"], t0[n]) and torch.equal(t["grad0"], g0[n])
            assert torch.equal(t["score"].long(), sc[n]) and t["score"].dtype == torch.int16
    with pytest.raises(ValueError, match="0..3"):
        build_dataset(["a"], t0, g0, {"a": torch.full((4, 3), 4)}, iterations=3)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(DatasetFormatError, match="bad.pt"):
        load_dataset(tmp_path / "bad.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(DatasetFormatError, match="not an AutoSparse dataset"):
        load_dataset(tmp_path / "other.pt")


# ----------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def irp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted irp run and one interrupted after its 2nd epoch, then resumed."""
    root = tmp_path_factory.mktemp("irp")
    cfg = _write(root / "configs", "irp", IRP)
    full = run_config(cfg, results=root / "full", log=lambda s: None)
    assert full.status == "completed", full.reason

    interrupt_after(cfg, root / "resumed", 2)
    resumed = run_config(cfg, results=root / "resumed", log=lambda s: None)
    assert resumed.status == "completed", resumed.reason
    return {"full": Path(full.run_dir), "resumed": Path(resumed.run_dir)}


def test_irp_end_to_end_records_masks_and_scores(irp_runs: dict[str, Path]) -> None:
    run = irp_runs["full"]
    records = json.loads((run / "iterations.json").read_text())
    assert [r["iteration"] for r in records] == [1, 2, 3, "final"]
    ds = torch.load(run / "autos_dataset.pt", weights_only=True)
    assert ds["iterations"] == 3 and ds["criterion"] == "magnitude" and ds["target_sparsity"] == 0.9
    total = sum(t["score"].numel() for t in ds["tensors"])
    for i, s in enumerate(sparsity_schedule(0.9, 3), 1):
        kept = round((1 - s) * total)
        assert records[i - 1]["density"] == pytest.approx(kept / total)
        # a weight has score >= i exactly when it survived pruning step i
        assert sum(int((t["score"] >= i).sum()) for t in ds["tensors"]) == kept
        assert 0.0 <= records[i - 1]["test_acc"] <= 1.0
        assert set(records[i - 1]["layer_density"]) == {t["name"] for t in ds["tensors"]}
    mask = load_torch(run / "mask.pt")
    for t in ds["tensors"]:
        assert torch.equal(mask[t["name"]], t["score"] == 3)  # score N = in the final mask
        assert t["grad0"].abs().sum() > 0
    results = json.loads((run / "results.json").read_text())
    assert results["achieved_sparsity"] == pytest.approx(1 - round(0.1 * total) / total)
    assert results["epochs"] == 4  # 3 iterations + the final training


def test_a_byte_flipped_autosparse_dataset_is_refused_naming_the_file(irp_runs: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    from helpers import flip_tensor_byte

    path = tmp_path / "autos_dataset.pt"
    path.write_bytes((irp_runs["full"] / "autos_dataset.pt").read_bytes())
    assert load_dataset(path)["iterations"] == 3
    flip_tensor_byte(path)
    torch.load(path, weights_only=True)  # torch alone would train a predictor on it
    with pytest.raises(DatasetFormatError, match=r"autos_dataset\.pt: not a readable torch file \(content digest"):
        load_dataset(path)


def test_irp_rewinds_to_theta0_when_the_final_training_is_skipped(tmp_path: Path) -> None:
    cfg = copy.deepcopy(IRP)
    cfg["training"]["irp"].update({"iterations": 2, "final_epochs": 0})
    out = run_config(_write(tmp_path, "irp0", cfg), results=tmp_path / "res", log=lambda s: None)
    assert out.status == "completed", out.reason
    run = Path(out.run_dir)
    final = load_torch(run / "final_model.pt")
    ds = torch.load(run / "autos_dataset.pt", weights_only=True)
    for t in ds["tensors"]:
        keep = t["score"] == 2
        w = final[t["name"]]
        assert torch.equal(w[keep], t["theta0"][keep])  # survivors exactly theta0
        assert torch.count_nonzero(w[~keep]) == 0


def test_irp_interrupted_and_resumed_equals_uninterrupted(irp_runs: dict[str, Path]) -> None:
    a, b = irp_runs["full"], irp_runs["resumed"]
    assert json.loads((b / "status.json").read_text())["attempts"] == 2
    fa, fb = load_torch(a / "final_model.pt"), load_torch(b / "final_model.pt")
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    da = torch.load(a / "autos_dataset.pt", weights_only=True)
    db = torch.load(b / "autos_dataset.pt", weights_only=True)
    for ta, tb in zip(da["tensors"], db["tensors"]):
        assert torch.equal(ta["score"], tb["score"]) and torch.equal(ta["grad0"], tb["grad0"])


def test_irp_rejects_the_dense_criterion_and_a_late_rewind(tmp_path: Path) -> None:
    cfg = copy.deepcopy(IRP)
    cfg["training"]["compressor"]["class"] = "none"
    out = run_config(_write(tmp_path, "dense", cfg), results=tmp_path / "res", log=lambda s: None)
    assert out.status == "failed" and "training.compressor.class" in out.reason
    cfg = copy.deepcopy(IRP)
    cfg["training"]["irp"]["rewind_epoch"] = 2
    out = run_config(_write(tmp_path, "late", cfg), results=tmp_path / "res", log=lambda s: None)
    assert out.status == "failed" and "training.irp.rewind_epoch" in out.reason


def test_pat_end_to_end(tmp_path: Path) -> None:
    cfg = copy.deepcopy(IRP)
    cfg["general"]["experiment"] = "pat"
    cfg["training"]["pat"] = {"finetune_epochs": 1, "finetune_learning_rate": 0.01}
    del cfg["training"]["irp"]
    out = run_config(_write(tmp_path, "pat", cfg), results=tmp_path / "res", log=lambda s: None)
    assert out.status == "completed", out.reason
    run = Path(out.run_dir)
    records = json.loads((run / "iterations.json").read_text())
    assert [r["phase"] for r in records] == ["dense", "pruned", "fine-tuned"]
    assert records[0]["density"] == 1.0 and records[1]["density"] == pytest.approx(0.1, abs=1e-3)
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 2 and results["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    mask, final = load_torch(run / "mask.pt"), load_torch(run / "final_model.pt")
    for n, m in mask.items():
        assert torch.count_nonzero(final[n][~m]) == 0
    history = json.loads((run / "history.json").read_text())
    assert history[1]["lr"] == pytest.approx(0.01)  # the fine-tuning restarted with its own rate


# ------------------------------------------------------------------ score cache and diagnostics, early
@pytest.mark.parametrize("experiment", ["irp", "pat"])
def test_irp_and_pat_record_hutchinson_diagnostics_and_reuse_scores_at_another_sparsity(experiment: str,
                                                                                         tmp_path: Path) -> None:
    cfg = copy.deepcopy(IRP)
    cfg["general"]["experiment"] = experiment
    cfg["training"]["compressor"].update({"class": "hutch_diag", "options": {"probes": 2, "seed": 1}})
    cfg["training"]["irp"]["iterations"] = 2
    cfg["training"]["pat"] = {"finetune_epochs": 1}
    outs = []
    for sparsity in (0.9, 0.8):
        cfg["training"]["compressor"]["sparsity"] = sparsity
        out = run_config(_write(tmp_path, f"{experiment}{sparsity}", cfg), results=tmp_path / "res",
                         log=lambda s: None)
        assert out.status == "completed", out.reason
        outs.append(json.loads((Path(out.run_dir) / "results.json").read_text()))
    first, second = outs
    for res in outs:
        tensors = res["criterion_diagnostics"]["tensors"]
        assert res["criterion_diagnostics"]["estimator"] == "hutchinson" and tensors
        assert all("mean_stderr" in t for t in tensors.values())
    # the dense network scored first is the same at both sparsities: its scores come from the cache
    assert first["score_cache_hits"] == 0 and second["score_cache_hits"] >= 1
    assert second["score_cache_hits"] + second["score_cache_misses"] == (2 if experiment == "irp" else 1)


EARLY = {**copy.deepcopy(IRP), "general": {"id": "early", "experiment": "early", "seed": 0,
                                           "gpu": {"ngpus": 0, "gpu_id": 0}}}
EARLY["training"] = {**copy.deepcopy(IRP["training"]), "num_steps": 3, "early": {"prune_epoch": 1.5}}
EARLY["training"]["compressor"] = {"class": "snip", "sparsity": 0.9, "batch_size": 10, "per_class_samples": 3}
del EARLY["training"]["irp"]


def test_early_prunes_inside_an_epoch_and_trains_on_with_the_same_schedule(tmp_path: Path) -> None:
    out = run_config(_write(tmp_path, "early", EARLY), results=tmp_path / "res", log=lambda s: None)
    assert out.status == "completed", out.reason
    run = Path(out.run_dir)
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[0]["density"] == 1.0 and history[1]["density"] == pytest.approx(0.1, abs=1e-3)
    ckpt = load_torch(run / "checkpoint.pt")
    assert ckpt["state"]["optimizer"] == {"lr": None, "epochs": 3}  # one optimizer and schedule throughout
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 3 and results["best_val_epoch"] >= 2  # best chosen among pruned epochs
    mask, final = load_torch(run / "mask.pt"), load_torch(run / "final_model.pt")
    assert all(torch.count_nonzero(final[n][~m]) == 0 for n, m in mask.items())


def test_early_interrupted_right_after_pruning_resumes_inside_the_epoch_bit_exactly(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    cfg = _write(tmp_path, "early", EARLY)
    reference = run_config(cfg, results=tmp_path / "a", log=lambda s: None)
    import engine.stages

    original = engine.stages.Prune.run

    def prune_then_stop(self, run) -> None:
        original(self, run)
        raise KeyboardInterrupt  # before the checkpoint that follows pruning: resume redoes it

    monkeypatch.setattr(engine.stages.Prune, "run", prune_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_config(cfg, results=tmp_path / "b", log=lambda s: None)
    folder = Path(reference.run_dir.replace(str(tmp_path / "a"), str(tmp_path / "b")))
    per_epoch = load_torch(Path(reference.run_dir) / "checkpoint.pt")["state"]["step"] // 3
    ckpt = load_torch(folder / "checkpoint.pt")  # written after the dense stage, inside epoch 2
    assert ckpt["stage"] == 1 and ckpt["state"]["step"] == round(1.5 * per_epoch) and ckpt["epoch"] == 1
    monkeypatch.setattr(engine.stages.Prune, "run", original)
    resumed = run_config(cfg, results=tmp_path / "b", log=lambda s: None)
    assert resumed.status == "completed"
    a, b = load_torch(Path(reference.run_dir) / "final_model.pt"), load_torch(folder / "final_model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((folder / "results.json").read_text())["score_cache"] == "hit"  # the redone scoring


def test_early_prune_epoch_must_lie_before_the_end(tmp_path: Path) -> None:
    cfg = copy.deepcopy(EARLY)
    cfg["training"]["early"]["prune_epoch"] = 3
    out = run_config(_write(tmp_path, "late", cfg), results=tmp_path / "res", log=lambda s: None)
    assert out.status == "failed" and "training.early.prune_epoch" in out.reason and "valid:" in out.reason


# ------------------------------------------------------------ irp as AutoSparse's code runs it (issue 15)
def test_irp_prune_first_ranks_theta0_before_any_training(tmp_path: Path) -> None:
    cfg = copy.deepcopy(IRP)
    cfg["training"]["irp"].update({"order": "prune_first", "reset_non_prunable": False})
    cfg["training"]["compressor"].update({"prune_classifier": True, "warmup": 0})
    out = run_config(_write(tmp_path, "pf", cfg), results=tmp_path / "res", log=lambda s: None)
    assert out.status == "completed", out.reason
    run = Path(out.run_dir)
    records = json.loads((run / "iterations.json").read_text())
    assert [r["iteration"] for r in records] == [1, 2, 3, "final"]
    assert records[0]["trained_density"] is None and records[1]["trained_density"] == pytest.approx(
        records[0]["density"])
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 3  # N trainings: 2 between the pruning steps + the final one
    ds = torch.load(run / "autos_dataset.pt", weights_only=True)
    names = [t["name"] for t in ds["tensors"]]
    assert names[-1] == compressors.prunable_names(_tiny_model(), include_classifier=True)[-1]  # classifier pruned
    # step 1 is magnitude at theta0: the survivors of step 1 are the top |theta0| weights
    magnitudes = torch.cat([t["theta0"].abs().reshape(-1) for t in ds["tensors"]])
    survived = torch.cat([(t["score"] >= 1).reshape(-1) for t in ds["tensors"]])
    kept = int(survived.sum())
    assert kept == round((1 - sparsity_schedule(0.9, 3)[0]) * magnitudes.numel())
    assert torch.equal(survived, magnitudes >= magnitudes.topk(kept).values.min())


def _tiny_model() -> nn.Module:
    import models

    return models.build("digits_cnn", num_classes=10, input_shape=(1, 8, 8), width=8)


def test_irp_train_sum_gradient_is_the_sum_over_the_training_set(tmp_path: Path) -> None:
    from engine.assemble import build_loaders, initial_model
    from runspec import RunSpec

    cfg = copy.deepcopy(IRP)
    cfg["training"]["compressor"]["warmup"] = 0
    cfg["training"]["irp"].update({"iterations": 1, "final_epochs": 0, "grad_feature": "train_sum",
                                   "grad_batch_size": 50})
    path = _write(tmp_path, "sum", cfg)
    out = run_config(path, results=tmp_path / "res", log=lambda s: None)
    assert out.status == "completed", out.reason
    ds = torch.load(Path(out.run_dir) / "autos_dataset.pt", weights_only=True)
    # reference: the model at theta0 in eval mode, one backward per 50 training samples, summed
    resolved = RunSpec.load(path).config
    loaders = build_loaders(resolved, torch.device("cpu"))
    model = initial_model(resolved, loaders.num_classes, loaders.input_shape).eval()
    params = dict(model.named_parameters())
    names = [t["name"] for t in ds["tensors"]]
    total = {n: torch.zeros_like(params[n]) for n in names}
    train_set = loaders.train.dataset
    for start in range(0, len(train_set), 50):
        xb, yb = zip(*(train_set[i] for i in range(start, min(start + 50, len(train_set)))))
        loss = nn.functional.cross_entropy(model(torch.stack(xb)), torch.as_tensor(yb))
        for n, g in zip(names, torch.autograd.grad(loss, [params[n] for n in names])):
            total[n] += g
    for t in ds["tensors"]:
        torch.testing.assert_close(t["grad0"], total[t["name"]], atol=1e-5, rtol=1e-4)
    assert ds["grad_feature"] == "train_sum" and ds["order"] == "train_first"


def test_irp_refuses_option_combinations_that_mean_nothing(tmp_path: Path) -> None:
    cases = [({"order": "prune_first", "rewind_epoch": 1}, "training.irp.rewind_epoch"),
             ({"grad_batch_size": 64}, "training.irp.grad_batch_size")]
    for i, (irp, field) in enumerate(cases):
        cfg = copy.deepcopy(IRP)
        cfg["training"]["irp"].update(irp)
        out = run_config(_write(tmp_path, f"bad{i}", cfg), results=tmp_path / "res", log=lambda s: None)
        assert out.status == "failed" and field in out.reason, out.reason
