"""Smoke mode that means something (issue 22 item 8): capped evaluation reads samples drawn at random with
the run seed rather than the first batches of a class-sorted split, and ``run --max-batches N`` /
``run --set PATH=VALUE`` change a config from the command line, checked like any field and part of the
run's identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datafiles import write_image_tree

import data
from data import LoaderSettings, MaskDataSettings, build_loaders, smoke_eval_loaders
from main import main
from runspec import RunSpec


def _labels(loader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


@pytest.mark.parametrize("kind", ["classic", "device"])
def test_capped_evaluation_of_a_class_sorted_split_sees_every_class(tmp_path: Path, kind: str) -> None:
    write_image_tree(tmp_path / "f", splits=("train", "test"), classes=tuple("abcdefgh"), size=(8, 8), per_class=8)
    splits = data.get("imagefolder")(root=str(tmp_path), path="f", image_size=8, padding=1).load()
    full = build_loaders(splits, LoaderSettings(batch_size=8, kind=kind, train4val=True, val_fraction=0.25),
                         MaskDataSettings(per_class_samples=1), seed=3)
    assert set(_labels(full.test)[:16]) == {0, 1}  # the first two batches of the stored order: two classes
    smoke = smoke_eval_loaders(full, max_batches=2)
    first = _labels(smoke.test)
    assert len(first) == 16 and len(set(first)) >= 5  # 16 samples drawn from all 8 classes
    assert _labels(smoke.test) == first  # the same samples every pass
    assert _labels(smoke_eval_loaders(full, max_batches=2).test) == first  # and every run of the seed
    other = build_loaders(splits, LoaderSettings(batch_size=8, kind=kind, train4val=True, val_fraction=0.25),
                          MaskDataSettings(per_class_samples=1), seed=4)
    assert _labels(smoke_eval_loaders(other, max_batches=2).test) != first  # another seed, other samples
    assert len(_labels(smoke.val)) == 16 and len(set(_labels(smoke.val))) >= 4
    assert smoke_eval_loaders(full, max_batches=100).test is full.test  # a cap above the split: unchanged


def test_a_smoke_run_evaluates_on_the_drawn_samples(make_config, tmp_path: Path) -> None:
    """In the pipeline: ``--max-batches`` gives a run whose test numbers come from drawn samples."""
    write_image_tree(tmp_path / "f", splits=("train", "test"), classes=tuple("abcd"), size=(8, 8), per_class=6)
    cfg = make_config(**{"dataset": {"class": "imagefolder", "root": str(tmp_path), "batch_size": 4,
                                     "options": {"path": "f", "image_size": 8, "padding": 1}},
                         "model": {"class": "mlp", "options": {"hidden": [16]}},
                         "training.num_steps": 1, "training.compressor.per_class_samples": 1})
    assert main(["run", str(cfg), "--results", str(tmp_path / "r"), "--max-batches", "2"]) == 0
    spec = RunSpec.load(cfg, overrides=[("training.max_batches", 2)])
    results = json.loads((spec.run_dir(tmp_path / "r") / "results.json").read_text())
    assert 0.0 <= results["final_test_acc"] <= 1.0
    # 8 of the 24 test images are evaluated: accuracy is a multiple of 1/8
    assert abs(results["final_test_acc"] * 8 - round(results["final_test_acc"] * 8)) < 1e-9


def test_run_set_and_max_batches_are_checked_recorded_and_part_of_the_identity(make_config, tmp_path: Path,
                                                                               capsys) -> None:
    cfg, results = make_config(**{"training.num_steps": 2}), tmp_path / "r"
    args = ["run", str(cfg), "--results", str(results)]
    assert main(args + ["--max-batches", "1", "--set", "epochs=1", "--set", "compressor.sparsity=0.5"]) == 0
    spec = RunSpec.load(cfg, overrides=[("training.num_steps", 1), ("training.compressor.sparsity", 0.5),
                                        ("training.max_batches", 1)])
    folder = spec.run_dir(results)
    recorded = json.loads((folder / "config.json").read_text())
    assert recorded["training"]["num_steps"] == 1 and recorded["training"]["max_batches"] == 1
    assert recorded["training"]["compressor"]["sparsity"] == 0.5
    assert folder != RunSpec.load(cfg).run_dir(results)  # its own run folder
    assert json.loads(cfg.read_text())["training"]["num_steps"] == 2  # the file is not changed
    capsys.readouterr()
    assert main(args + ["--max-batches", "1", "--set", "epochs=1", "--set", "compressor.sparsity=0.5"]) == 0
    assert "1 completed (1 skipped)" in capsys.readouterr().out  # same overrides: the same run
    # checked like the field itself, naming it
    assert main(args + ["--set", "compressor.sparsty=0.5"]) == 1
    assert "training.compressor.sparsty: unknown key (did you mean 'sparsity'?)" in capsys.readouterr().out
    assert main(args + ["--set", "compressor.sparsity=2"]) == 1
    assert "training.compressor.sparsity" in capsys.readouterr().out
    assert main(["validate", str(cfg), "--set", "seed=1.5"]) == 1
    assert "general.seed" in capsys.readouterr().out
    for bad in (["--set", "sparsity"], ["--set", "=1"], ["--max-batches", "0"]):
        with pytest.raises(SystemExit) as stop:
            main(args + bad)
        assert stop.value.code == 2


def test_an_if_unset_override_applies_only_where_the_config_is_silent_and_survives_json() -> None:
    from runspec.paths import IfUnset, apply_overrides, override_from_json, override_to_json

    raw = {"general": {"seed": 3}}
    out = apply_overrides(raw, [("general.compat", IfUnset("official")), ("general.seed", IfUnset(9))])
    assert out == {"general": {"seed": 3, "compat": "official"}} and raw == {"general": {"seed": 3}}
    sent = json.loads(json.dumps([[p, override_to_json(v)] for p, v in [("general.compat", IfUnset("official"))]]))
    assert [(p, override_from_json(v)) for p, v in sent] == [("general.compat", IfUnset("official"))]
    assert override_from_json({"a": 1}) == {"a": 1}  # an ordinary object value stays one
