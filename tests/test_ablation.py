"""Sanity ablations of Frankle et al. (ICLR 2021), `training.compressor.ablation` (engine/pruning.py):
invert keeps the lowest scores, shuffle keeps each layer's density at random places, reinit re-draws the
kept weights; all seeded from the run seed and part of the run's identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import compressors
from launch.runner import run_config
from runspec import RunSpec
from utils.io import load_torch
from utils.schema import ConfigError

BASE = {"training.num_steps": 1, "training.compressor.class": "magnitude", "training.compressor.sparsity": 0.8,
        "training.compressor.warmup": 0}


def _run(make_config, tmp_path: Path, ablation: str) -> Path:
    cfg = make_config(ablation, **BASE, **{"training.compressor.ablation": ablation})
    out = run_config(cfg, results=tmp_path / "res", log=lambda s: None)
    assert out.status == "completed", out.reason
    return Path(out.run_dir)


def _init_weights(make_config) -> dict[str, torch.Tensor]:
    from engine.assemble import build_loaders, initial_model

    cfg = RunSpec.load(make_config("init", **BASE)).config
    loaders = build_loaders(cfg, torch.device("cpu"))
    model = initial_model(cfg, loaders.num_classes, loaders.input_shape)
    return {n: p.detach() for n, p in model.named_parameters()}


def test_invert_keeps_the_lowest_scores(make_config, tmp_path: Path) -> None:
    mask = load_torch(_run(make_config, tmp_path, "invert") / "mask.pt")
    theta = _init_weights(make_config)
    lowest = compressors.select({n: -theta[n].abs() for n in mask}, 0.8, "global")
    assert all(torch.equal(mask[n], lowest[n].bool()) for n in mask)


def test_shuffle_keeps_each_layers_density_but_not_its_places(make_config, tmp_path: Path) -> None:
    plain = load_torch(_run(make_config, tmp_path, "none") / "mask.pt")
    shuffled = load_torch(_run(make_config, tmp_path, "shuffle") / "mask.pt")
    for n in plain:
        assert int(shuffled[n].sum()) == int(plain[n].sum())
    assert any(not torch.equal(plain[n], shuffled[n]) for n in plain)
    again = load_torch(_run(make_config, tmp_path / "again", "shuffle") / "mask.pt")
    assert all(torch.equal(again[n], shuffled[n]) for n in again)  # seeded from the run seed


def test_reinit_keeps_the_mask_and_the_pruned_weights_at_zero(make_config, tmp_path: Path) -> None:
    plain = load_torch(_run(make_config, tmp_path, "none") / "mask.pt")
    run = _run(make_config, tmp_path, "reinit")
    assert all(torch.equal(load_torch(run / "mask.pt")[n], plain[n]) for n in plain)
    final = load_torch(run / "final_model.pt")
    assert all(torch.count_nonzero(final[n][~m]) == 0 for n, m in plain.items())


def test_reinit_changes_the_network_that_trains(make_config, tmp_path: Path) -> None:
    from engine.assemble import assemble
    from engine.pruning import reinitialise_kept

    spec = RunSpec.load(make_config("r", **BASE, **{"training.compressor.ablation": "reinit"}))
    run = assemble(spec, spec.folder(tmp_path), log=lambda s: None)
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    masks = compressors.select({n: before[n].abs() for n in run.masks}, 0.8, "global")
    run.set_masks(masks)
    reinitialise_kept(run)
    for n, m in masks.items():
        w = dict(run.model.named_parameters())[n].detach()
        kept = m.bool()
        assert torch.count_nonzero(w[~kept]) == 0 and not torch.equal(w[kept], before[n][kept])
        assert w[kept].std() == pytest.approx(before[n].std(), rel=0.5)  # the same initial distribution


def test_ablations_are_part_of_the_identity_and_refused_for_irp(make_config) -> None:
    plain = RunSpec.load(make_config("a", **BASE))
    shuffled = RunSpec.load(make_config("b", **BASE, **{"training.compressor.ablation": "shuffle"}))
    assert plain.hash() != shuffled.hash()
    with pytest.raises(ConfigError) as err:
        RunSpec.load(make_config("c", **BASE, **{"general.experiment": "irp",
                                                 "training.compressor.ablation": "invert"}))
    assert "training.compressor.ablation" in str(err.value)
