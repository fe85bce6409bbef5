"""AutoSparse: features, the predictor fit (reproducible, learns a monotone relation, hold-out by whole
tensors or datasets), its file format and the CLI, and the ``autosparse`` criterion (formula, bounded
batches, clear errors for missing / corrupt / incompatible predictor files, end to end on digits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import compressors
import main as cli
from autosparse.dataset import build_dataset, save_dataset
from autosparse.features import tensor_features
from autosparse.predictor import PredictorError, build_mlp, load_predictor, make_settings, save_predictor
from autosparse.train import FitOptions, collect_rows, fit, spearman, split_holdout
from launch.runner import run_config
from utils.io import save_torch
from utils.schema import ConfigError

N_ITER = 4
SHAPES = {"conv1.weight": (12, 3, 3, 3), "conv2.weight": (16, 12, 3, 3), "fc.weight": (10, 64)}


def synthetic(seed: int) -> dict:
    """theta0, g0 with a different scale per tensor; the surviving score grows with |theta0| / std
    (standardised magnitude), quantised to 0..N -- a monotone target."""
    g = torch.Generator().manual_seed(seed)
    theta0, grad0, scores = {}, {}, {}
    for i, (n, shape) in enumerate(SHAPES.items()):
        theta0[n] = torch.randn(shape, generator=g) * (0.1 * (i + 1))
        grad0[n] = torch.randn(shape, generator=g) * 10.0 ** (-i - 2)
        z = theta0[n].abs() / theta0[n].std()
        scores[n] = torch.clamp((z * 2).floor(), 0, N_ITER).to(torch.int16)
    return build_dataset(list(SHAPES), theta0, grad0, scores, iterations=N_ITER, seed=seed)


def write_synthetic(folder: Path, seed: int) -> Path:
    path = folder / f"autos_{seed}.pt"
    save_dataset(path, synthetic(seed))
    return path


FAST = dict(hidden=[16, 16], epochs=8, batch_size=256, lr=3e-3)


# ------------------------------------------------------------------------------------------ features
def test_features_are_standardised_per_tensor_or_raw() -> None:
    t, g = torch.randn(50, 3) * 5 + 2, torch.randn(50, 3) * 1e-4
    x = tensor_features(t, g, "standardized")
    assert x.shape == (150, 2)
    torch.testing.assert_close(x.double().mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.double().std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-4,
                               rtol=0)
    raw = tensor_features(t, g, "raw")
    assert torch.equal(raw[:, 0], t.reshape(-1)) and torch.equal(raw[:, 1], g.reshape(-1))
    assert torch.equal(tensor_features(torch.full((4,), 3.0), torch.zeros(4))[:, 0], torch.zeros(4))  # constant


# ------------------------------------------------------------------------------------------- hold-out
def test_tensor_holdout_never_mixes_rows_of_one_tensor() -> None:
    rows = collect_rows([synthetic(0), synthetic(1)], "standardized")
    for seed in range(5):
        train, held = split_holdout(rows, "tensor", seed, 0.34)
        assert held and train and not set(train) & set(held)
        assert sorted(train + held) == list(range(len(rows)))
    res = fit([synthetic(0), synthetic(1)], FitOptions(**FAST, holdout="tensor", holdout_fraction=0.34), progress=False)
    assert not set(res.train_keys) & set(res.eval_keys)
    sizes = {f"{d}:{n}": torch.Size(s).numel() for d in (0, 1) for n, s in SHAPES.items()}
    assert res.metrics["eval"]["rows"] == sum(sizes[k] for k in res.eval_keys)  # whole tensors only
    assert res.metrics["train"]["rows"] == sum(sizes[k] for k in res.train_keys)


def test_dataset_holdout_keeps_the_last_dataset_out() -> None:
    rows = collect_rows([synthetic(0), synthetic(1)], "raw")
    train, held = split_holdout(rows, "dataset", 0)
    assert {rows[i].dataset for i in held} == {1} and {rows[i].dataset for i in train} == {0}
    with pytest.raises(ValueError, match="two or more datasets"):
        split_holdout(collect_rows([synthetic(0)], "raw"), "dataset", 0)


# -------------------------------------------------------------------------------------------- the fit
def test_fit_is_reproducible_and_learns_a_monotone_target() -> None:
    data = [synthetic(0), synthetic(1)]
    opts = FitOptions(**FAST, holdout="dataset", seed=3)
    a, b = fit(data, opts, progress=False), fit(data, opts, progress=False)
    assert all(torch.equal(a.net.state_dict()[k], b.net.state_dict()[k]) for k in a.net.state_dict())
    c = fit(data, FitOptions(**{**FAST, "seed": 4}, holdout="dataset"), progress=False)
    assert not torch.equal(a.net.state_dict()["0.weight"], c.net.state_dict()["0.weight"])
    ev = a.metrics["eval"]
    assert ev["spearman"] > 0.9, ev  # the held-out dataset is ranked almost perfectly
    assert ev["mse"] < 0.05
    # control: a fit that cannot see the feature carrying the signal (raw theta0 of wildly different
    # scales is fine, but shuffled targets are not) ranks at chance
    shuffled = [synthetic(0), synthetic(1)]
    g = torch.Generator().manual_seed(0)
    for ds in shuffled:
        for t in ds["tensors"]:
            flat = t["score"].reshape(-1)
            t["score"] = flat[torch.randperm(flat.numel(), generator=g)].reshape(t["score"].shape)
    bad = fit(shuffled, opts, progress=False).metrics["eval"]["spearman"]
    assert abs(bad) < 0.2


def test_spearman_matches_a_hand_computation() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 1, 1]) != spearman([1, 2, 3], [1, 1, 1])  # NaN for a constant side


def test_cli_writes_a_weights_only_predictor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d0, d1 = write_synthetic(tmp_path, 0), write_synthetic(tmp_path, 1)
    out = tmp_path / "p" / "predictor.pt"
    rc = cli.main(["autos-train", str(d0), str(d1), "--out", str(out), "--hidden", "8,4", "--epochs", "2",
                   "--holdout", "dataset", "--seed", "1"])
    assert rc == 0
    assert "spearman" in capsys.readouterr().out
    blob = torch.load(out, weights_only=True)
    assert blob["format"] == "autosparse-predictor" and blob["settings"]["hidden"] == [8, 4]
    assert blob["settings"]["features"] == "standardized"
    assert blob["training"]["eval_tensors"] == [f"1:{n}" for n in SHAPES]
    assert blob["training"]["options"]["seed"] == 1
    net, settings = load_predictor(out)
    assert isinstance(net, nn.Sequential) and settings["feature_names"] == ["theta0", "grad0"]
    rc = cli.main(["autos-train", str(d0), "--out", str(tmp_path / "x.pt"), "--holdout", "dataset"])
    assert rc == 2 and not (tmp_path / "x.pt").exists()
    assert "two or more datasets" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ criterion
def _predictor(path: Path, hidden: list[int] | None = None, features: str = "standardized", seed: int = 0) -> Path:
    hidden = hidden or [8]
    torch.manual_seed(seed)
    save_predictor(path, build_mlp(2, hidden), make_settings(features, hidden), {})
    return path


def test_criterion_errors_on_missing_corrupt_or_incompatible_predictors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="predictor"):
        compressors.build("autosparse")
    with pytest.raises(PredictorError, match=r"nope\.pt.*no such file.*autos-train"):
        compressors.build("autosparse", predictor=str(tmp_path / "nope.pt"))
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(PredictorError, match=r"corrupt\.pt.*cannot be read.*autos-train"):
        compressors.build("autosparse", predictor=str(tmp_path / "corrupt.pt"))
    torch.save(nn.Linear(2, 1), tmp_path / "pickled.pt")  # a pickled module, refused by weights_only
    with pytest.raises(PredictorError, match=r"pickled\.pt.*cannot be read"):
        compressors.build("autosparse", predictor=str(tmp_path / "pickled.pt"))
    save_dataset(tmp_path / "dataset.pt", synthetic(0))  # a dataset, not a predictor
    with pytest.raises(PredictorError, match=r"format is 'autosparse-dataset'"):
        compressors.build("autosparse", predictor=str(tmp_path / "dataset.pt"))
    blob = torch.load(_predictor(tmp_path / "p.pt", [16]), weights_only=True)
    blob["settings"]["hidden"] = [8]
    save_torch(tmp_path / "mismatch.pt", blob)
    with pytest.raises(PredictorError, match=r"mismatch\.pt.*does not match an MLP with hidden sizes \[8\]"):
        compressors.build("autosparse", predictor=str(tmp_path / "mismatch.pt"))
    blob["settings"].update(hidden=[16], feature_names=["theta0", "hessian"])
    save_torch(tmp_path / "features.pt", blob)
    with pytest.raises(PredictorError, match="incompatible settings"):
        compressors.build("autosparse", predictor=str(tmp_path / "features.pt"))


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 36, 8), nn.ReLU(), nn.Linear(8, 3))


def summed_batch_gradients(model: nn.Module, loader: list, names: list[str]) -> dict[str, torch.Tensor]:
    """Σ_b ∇ CE(batch b) per named parameter, in eval mode, one backward per batch (the model's mode restored)."""
    was_training = model.training
    model.eval()
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in names}
    for xb, yb in loader:
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(xb), yb), [params[n] for n in names])
        for n, gr in zip(names, grads):
            total[n] += gr
    model.train(was_training)
    return total


@pytest.mark.parametrize("features", ["standardized", "raw"])
def test_criterion_equals_the_mlp_on_theta0_and_the_mean_gradient(tmp_path: Path, features: str) -> None:
    path = _predictor(tmp_path / "p.pt", [8, 8], features)
    model = _small_cnn()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 1, 6, 6, generator=g), torch.randint(0, 3, (7,), generator=g)
    loader = [(x[:3], y[:3]), (x[3:6], y[3:6]), (x[6:], y[6:])]
    names = compressors.prunable_names(model)
    # reference: eval mode, one backward per mask batch, mean over batches, features by hand
    params = dict(model.named_parameters())
    gbar = {n: g / len(loader) for n, g in summed_batch_gradients(model, loader, names).items()}
    net, _ = load_predictor(path)
    crit_big = compressors.build("autosparse", predictor=str(path))
    crit_small = compressors.build("autosparse", predictor=str(path), batch_size=5)
    s_big = crit_big.score(model, loader, nn.CrossEntropyLoss())
    s_small = crit_small.score(model, loader, nn.CrossEntropyLoss())
    assert model.training  # the model is left as it was
    for n in names:
        t, gr = params[n].detach().reshape(-1).double(), gbar[n].reshape(-1).double()
        if features == "standardized":
            t, gr = (t - t.mean()) / t.std(unbiased=False), (gr - gr.mean()) / gr.std(unbiased=False)
        with torch.no_grad():
            ref = net(torch.stack([t, gr], 1).float()).reshape(params[n].shape)
        torch.testing.assert_close(s_big[n], ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(s_small[n], s_big[n], atol=1e-6, rtol=1e-6)  # batching changes nothing


def test_the_cache_key_follows_the_predictor_content(tmp_path: Path) -> None:
    path = _predictor(tmp_path / "p.pt", seed=0)
    a = compressors.build("autosparse", predictor=str(path)).options_dict()
    _predictor(path, seed=1)  # re-trained at the same path
    b = compressors.build("autosparse", predictor=str(path)).options_dict()
    assert a["predictor"] == b["predictor"] and a["predictor_sha256"] != b["predictor_sha256"]


def test_criterion_end_to_end_on_digits(tmp_path: Path) -> None:
    res = fit([synthetic(0)], FitOptions(**FAST, holdout="none"), progress=False)
    pred = tmp_path / "predictor.pt"
    save_predictor(pred, res.net, res.settings, {})
    cfg = {
        "general": {"id": "autos", "experiment": "pbt", "seed": 1, "gpu": {"ngpus": 0, "gpu_id": 0}},
        "dataset": {"class": "digits", "batch_size": 128, "train4val": False, "options": {"test_fraction": 0.7}},
        "model": {"class": "digits_cnn", "options": {"width": 8}},
        "training": {"num_steps": 1, "optimizer": {"class": "sgd", "learning_rate": 0.05},
                     "compressor": {"class": "autosparse", "sparsity": 0.9, "warmup": 1, "batch_size": 10,
                                    "per_class_samples": 3, "options": {"predictor": str(pred)}}},
    }
    path = tmp_path / "autos.json"
    path.write_text(json.dumps(cfg))
    out = run_config(path, results=tmp_path / "res", log=lambda s: None)
    assert out.status == "completed", out.reason
    results = json.loads((Path(out.run_dir) / "results.json").read_text())
    kept, total = results["kept_parameters"], results["prunable_parameters"]
    assert kept == round(0.1 * total) and results["layer_collapse"] == []
    # a missing predictor fails the run (recorded), naming the file
    cfg["training"]["compressor"]["options"]["predictor"] = str(tmp_path / "missing.pt")
    path.write_text(json.dumps(cfg))
    out = run_config(path, results=tmp_path / "res", log=lambda s: None)
    assert out.status == "failed" and "missing.pt" in out.reason


def test_a_byte_flipped_predictor_fails_validate_naming_the_file(make_config, tmp_path: Path, capsys) -> None:
    from helpers import flip_tensor_byte

    path = _predictor(tmp_path / "predictor.pt", [16, 16])
    cfg = make_config("autos", **{"training.compressor.class": "autosparse",
                                  "training.compressor.options": {"predictor": str(path)}})
    assert cli.main(["validate", str(cfg)]) == 0
    flip_tensor_byte(path)
    torch.load(path, weights_only=True)  # torch alone would use it
    assert cli.main(["validate", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert f"autosparse predictor '{path}': cannot be read (content digest mismatch" in out


def test_a_version_1_predictor_without_a_digest_is_read_with_a_warning(tmp_path: Path) -> None:
    blob = torch.load(_predictor(tmp_path / "p.pt"), weights_only=True)
    torch.save({**blob, "version": 1}, tmp_path / "old.pt")  # as versions before content digests wrote it
    with pytest.warns(UserWarning, match="written before content digests"):
        load_predictor(tmp_path / "old.pt")
    torch.save(blob, tmp_path / "lost.pt")  # version 2 always carries its digest: this one lost it
    with pytest.raises(PredictorError, match=r"lost\.pt'.*damaged \(.*no content digest"):
        load_predictor(tmp_path / "lost.pt")


# ------------------------------------------------------------------ AutoSparse as its paper's code ran it
def test_gradient_sum_option_feeds_the_summed_batch_gradients(tmp_path: Path) -> None:
    path = _predictor(tmp_path / "p.pt", [8], "raw")
    model = _small_cnn()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    names = compressors.prunable_names(model)
    params = dict(model.named_parameters())
    gsum = summed_batch_gradients(model, loader, names)
    net, _ = load_predictor(path)
    s_sum = compressors.build("autosparse", predictor=str(path), gradient="sum").score(model, loader,
                                                                                        nn.CrossEntropyLoss())
    s_mean = compressors.build("autosparse", predictor=str(path)).score(model, loader, nn.CrossEntropyLoss())
    for n in names:
        with torch.no_grad():
            ref = net(torch.stack([params[n].detach().reshape(-1), gsum[n].reshape(-1)], 1)).reshape(params[n].shape)
        torch.testing.assert_close(s_sum[n], ref, atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(s_sum[n], s_mean[n]) for n in names)  # raw features: the scale matters
    with pytest.raises(ConfigError, match="gradient"):
        compressors.build("autosparse", predictor=str(path), gradient="median")


def test_minmax_target_scales_over_the_whole_dataset() -> None:
    ds = synthetic(0)
    for t in ds["tensors"]:  # scores 1..3 only: min-max differs from score / N
        t["score"] = torch.clamp(t["score"], 1, 3)
    fraction = collect_rows([ds], "raw")
    minmax = collect_rows([ds], "raw", "minmax")
    for a, b in zip(fraction, minmax):
        torch.testing.assert_close(a.y, a.score.float() / N_ITER)
        torch.testing.assert_close(b.y, (b.score.float() - 1) / 2)
        torch.testing.assert_close(b.x, a.x)  # raw features either way
    assert min(float(r.y.min()) for r in minmax) == 0.0 and max(float(r.y.max()) for r in minmax) == 1.0
    result = fit([ds], FitOptions(**FAST, features="raw", target="minmax", holdout="none"), progress=False)
    assert result.settings["target"].startswith("surviving score, min-max")
    with pytest.raises(ValueError, match="target must be one of"):
        fit([ds], FitOptions(**FAST, target="zscore"), progress=False)
