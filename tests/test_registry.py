"""Registries: case-insensitive names, clear errors, dotted paths, auto-discovery of dropped-in files."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

import compressors
import compressors.criteria
import data
import models
import trainers
from utils.registry import ALLOW_ENV, Registry, UnknownName


def test_lookup_is_case_insensitive_and_aliases_work() -> None:
    assert models.get("VGG19") is models.get("vgg19")
    assert compressors.get("DENSE") is compressors.get("none")
    assert trainers.get("PBT").__name__ == "PruneBeforeTraining"
    assert data.get("Digits").num_classes == 10


def test_unknown_name_lists_valid_names_and_closest_match() -> None:
    with pytest.raises(UnknownName) as err:
        compressors.get("snp")
    msg = str(err.value)
    assert "did you mean 'snip'" in msg and "magnitude" in msg and "random" in msg


def test_duplicate_registration_is_refused() -> None:
    reg: Registry[type] = Registry("thing")
    reg.register("a")(int)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("A")(float)


def test_dotted_path_loads_a_criterion_from_outside_the_repo(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "my_lab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "crit.py").write_text(textwrap.dedent('''
        import torch
        from compressors.base import Compressor

        class Ones(Compressor):
            needs_data = False

            def compute(self, model, names, mask_loader, loss_fn, sparsity):
                params = dict(model.named_parameters())
                return {n: -params[n].detach().abs() for n in names}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(UnknownName, match="not allowed.*--allow-module my_lab"):
        compressors.build("my_lab.crit:Ones")
    assert "my_lab.crit" not in sys.modules and "my_lab" not in sys.modules  # nothing was imported
    monkeypatch.setenv(ALLOW_ENV, "my_lab,no_such_module_xyz")
    crit = compressors.build("my_lab.crit:Ones")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    scores = crit.score(model)
    assert list(scores) == ["0.weight"]
    assert torch.equal(scores["0.weight"], -model[0].weight.detach().abs())
    with pytest.raises(UnknownName, match="cannot import module"):
        compressors.get("no_such_module_xyz:Thing")


def test_a_file_dropped_into_the_criteria_folder_is_discovered(tmp_path: Path) -> None:
    (tmp_path / "dropped_in_criterion.py").write_text(textwrap.dedent('''
        import torch
        from compressors import register
        from compressors.base import Compressor

        @register("negative_magnitude_test")
        class NegativeMagnitude(Compressor):
            """Keeps the smallest weights (test only)."""
            needs_data = False

            def compute(self, model, names, mask_loader, loss_fn, sparsity):
                params = dict(model.named_parameters())
                return {n: -params[n].detach().abs() for n in names}
    '''))
    compressors.criteria.__path__.append(str(tmp_path))
    try:
        assert "negative_magnitude_test" in compressors.names()
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        masks = compressors.select(compressors.build("Negative_Magnitude_Test").score(model), 0.5)
        w = model[0].weight.detach().abs()
        assert w[masks["0.weight"].bool()].max() <= w[~masks["0.weight"].bool()].min()
    finally:
        compressors.criteria.__path__.remove(str(tmp_path))
        for key in [k for k in compressors.REGISTRY._entries if k == "negative_magnitude_test"]:
            del compressors.REGISTRY._entries[key], compressors.REGISTRY._display[key]
        sys.modules.pop("compressors.criteria.dropped_in_criterion", None)


def test_models_build_from_python_with_small_inputs() -> None:
    for name in ("resnet18", "VGG11", "digits_cnn", "mlp"):
        model = models.build(name, num_classes=7, input_shape=(1, 8, 8))
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    with pytest.raises(TypeError, match="model 'mlp'"):
        models.build("mlp", num_classes=3, input_shape=(1, 8, 8), depth=3)


def test_no_plugin_module_shadows_a_public_name_of_its_package() -> None:
    """A module compressors/density.py would replace the function compressors.density once imported."""
    import pkgutil

    for package in (compressors, data, models):
        modules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        assert not modules & set(package.__all__), package.__name__


def test_pruning_criteria_lists_each_criterion_once_without_the_dense_baseline() -> None:
    names = compressors.pruning_criteria()
    assert names == sorted(set(names)) and {"snip", "hts", "synflow", "magnitude"} <= set(names)
    assert "none" not in names and "dense" not in names  # the dense baseline prunes nothing (and is one class)
    assert len(names) == len({compressors.get(n) for n in names})
