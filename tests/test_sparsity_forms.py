"""Sparsity conventions: ``training.compressor`` takes a sparsity, a density (1 - sparsity) or a compression
(1 / density); they resolve to one sparsity and one run identity; sweeps expand power expressions
(``density=0.8^1:10``); the report labels columns in the form given and shows the effective sparsity."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from reporting import aggregate, build_report, load_runs, pivot_table
from runspec import RunSpec
from sweeps.grid import SweepSpecError, expand, parse_set
from utils.schema import ConfigError

BASE: dict[str, Any] = {
    "general": {"experiment": "pbt", "seed": 0},
    "dataset": {"class": "digits", "batch_size": 64},
    "model": {"class": "digits_cnn"},
    "training": {"num_steps": 2, "compressor": {"class": "snip"}},
}


def config(**compressor: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["training"]["compressor"].update(compressor)
    return data


def spec(**compressor: Any) -> RunSpec:
    return RunSpec.from_dict(config(**compressor))


@pytest.mark.parametrize("sparsity, density, compression", [(0.9, 0.1, 10), (0.3, 0.7, 1 / 0.7), (0.5, 0.5, 2),
                                                             (0.0, 1.0, 1), (0.999, 0.001, 1000)])
def test_the_three_forms_resolve_to_one_sparsity_and_one_run(sparsity, density, compression):
    specs = {"sparsity": spec(sparsity=sparsity), "density": spec(density=density),
             "compression": spec(compression=compression)}
    for form, s in specs.items():
        comp = s.config.training.compressor
        assert comp.sparsity == sparsity, form
        assert comp.sparsity_form == form and comp.density is None and comp.compression is None
    assert len({s.hash() for s in specs.values()}) == 1
    assert len({s.run_path() for s in specs.values()}) == 1
    for s in specs.values():  # the resolved config (config.json) names the sparsity once and loads again
        again = RunSpec.from_dict(s.to_dict())
        assert again.hash() == s.hash() and again.config.training.compressor.sparsity_form == \
            s.config.training.compressor.sparsity_form


def test_density_rounding_noise_does_not_move_the_run():
    assert 1 - 0.7 != 0.3  # what the rounding to 15 significant digits is for
    assert spec(density=0.7).hash() == spec(sparsity=0.3).hash()
    assert spec(density=0.8 ** 3).config.training.compressor.sparsity == 0.488
    assert spec(density=0.7).hash() != spec(density=0.71).hash()


@pytest.mark.parametrize("given, field, words", [
    ({"sparsity": 0.5, "density": 0.5}, "density", "sparsity and density are both given"),
    ({"sparsity": 0, "density": 0.5}, "density", "sparsity and density are both given"),
    ({"density": 0.5, "compression": 2}, "compression", "density and compression are both given"),
    ({"density": 0.0}, "density", "out of range; valid: (0, 1]"),
    ({"density": 1.5}, "density", "out of range; valid: (0, 1]"),
    ({"compression": 0.5}, "compression", "out of range; valid: [1, inf]"),
    ({"compression": 1e16}, "compression", "keeps no weight"),
    ({"sparsity": 1.0}, "sparsity", "out of range; valid: [0, 1)"),
])
def test_bad_forms_name_the_field_and_what_is_valid(given, field, words):
    with pytest.raises(ConfigError) as err:
        spec(**given)
    paths = [p.path for p in err.value.problems]
    assert f"training.compressor.{field}" in paths, paths
    assert any(words in p.message for p in err.value.problems), err.value
    if "both" in words:
        assert "valid: one of sparsity [0, 1), density (0, 1] or compression [1, inf)" in str(err.value)


def test_min_layer_density_and_reprune_are_checked():
    assert spec(sparsity=0.9, min_layer_density=0.05).config.training.compressor.min_layer_density == 0.05
    for given, words in [({"sparsity": 0.9, "min_layer_density": 0.2}, "above the density 0.1"),
                         ({"sparsity": 0.9, "min_layer_density": 0.05, "mask": "layer"}, "needs the global mask"),
                         ({"sparsity": 0.9, "reprune_disconnected": True, "ablation": "shuffle"}, "'shuffle'"),
                         ({"sparsity": 0.9, "min_layer_density": 0.0}, "out of range")]:
        with pytest.raises(ConfigError, match="training.compressor.(min_layer_density|reprune_disconnected)") as err:
            spec(**given)
        assert words in str(err.value), (given, str(err.value))
    # both options change what a run computes: part of the identity
    assert spec(sparsity=0.9, reprune_disconnected=True).hash() != spec(sparsity=0.9).hash()


def test_power_expressions_expand():
    assert parse_set("compressor.density=0.8^1:10").values == tuple(float(f"{0.8 ** k:.12g}") for k in range(1, 11))
    assert parse_set("compressor.compression=10^0.5:3:0.5").values == (3.16227766017, 10, 31.6227766017, 100,
                                                                       316.227766017, 1000)
    assert parse_set("compressor.compression=2^3").values == (8,)
    assert parse_set("compressor.density=0.5,0.8^2:3").values == (0.5, 0.64, 0.512)
    assert parse_set("sparsity=0.9,0.95").values == (0.9, 0.95)  # the plain syntax is unchanged
    assert parse_set("compressor.class=snip,a^b").values == ("snip", "a^b")  # not numbers: strings
    for bad, words in [("density=0.8^3:1", "below the first"), ("density=0.8^1:3:0", "step must be positive"),
                       ("density=0.8^1:3:-1", "step must be positive"), ("density=-8^0.5", "not a finite real"),
                       ("density=0.8^0:20000", "more than 10000"), ("density=0.5^1,0.5", "appears twice")]:
        with pytest.raises(SweepSpecError, match=words):
            parse_set(bad)


def test_a_density_sweep_writes_configs_that_resolve_to_the_sparsities():
    points = expand(config(sparsity=0.9), [parse_set("training.compressor.density=0.8^1:3")], with_dense=True,
                    dense_class="none")
    assert all("sparsity" not in p.data["training"]["compressor"] for p in points if not p.dense)  # the base's
    pruned = [p for p in points if not p.dense]
    assert [p.name for p in pruned] == ["density0.8", "density0.64", "density0.512"]
    assert [RunSpec.from_dict(p.data).config.training.compressor.sparsity for p in pruned] == [0.2, 0.36, 0.488]
    dense = [p for p in points if p.dense]
    assert len(dense) == 1 and "density" not in dense[0].data["training"]["compressor"]
    assert RunSpec.from_dict(dense[0].data).config.training.compressor.sparsity == 0.0


def fake_run(root, *, form_value: dict[str, Any], seed: int, acc: float, effective: float | None) -> None:
    s = RunSpec.from_dict({**config(**form_value), "general": {"experiment": "pbt", "seed": seed}})
    path = s.run_dir(root)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(s.to_dict()))
    (path / "status.json").write_text(json.dumps({"status": "completed"}))
    res = {"final_test_acc": acc, "best_val_test_acc": acc, "achieved_sparsity": s.config.training.compressor.sparsity}
    if effective is not None:
        res["effective_sparsity"] = effective
    (path / "results.json").write_text(json.dumps(res))


def test_report_labels_the_form_and_shows_both_sparsities(tmp_path):
    for seed, eff in ((0, 0.92), (1, 0.94)):
        fake_run(tmp_path / "d", form_value={"density": 0.1}, seed=seed, acc=0.9, effective=eff)
        fake_run(tmp_path / "c", form_value={"compression": 10}, seed=seed, acc=0.9, effective=eff)
        fake_run(tmp_path / "s", form_value={"sparsity": 0.9}, seed=seed, acc=0.9, effective=eff)
    fake_run(tmp_path / "old", form_value={"sparsity": 0.9}, seed=0, acc=0.9, effective=None)
    cells = {}
    for name in ("d", "c", "s", "old"):
        agg, _ = aggregate(load_runs(tmp_path / name, progress=False), "best_val_test_acc")
        table = pivot_table(agg, metric="best_val_test_acc")
        assert len(table.columns) == 1
        cells[name] = (table.columns[0], table.iloc[0, 0])
    assert cells["d"] == ("d=0.1", "**90.00 ± 0.00 (2)** [d_eff 0.07]")
    assert cells["c"] == ("c=10", "**90.00 ± 0.00 (2)** [c_eff 14.29]")
    assert cells["s"] == ("s=0.9", "**90.00 ± 0.00 (2)** [s_eff 0.93]")
    assert cells["old"] == ("s=0.9", "**90.00 ± – (1)**")  # a run of a version without effective sparsity
    agg, _ = aggregate(load_runs(tmp_path / "d", progress=False), "best_val_test_acc")
    assert agg.iloc[0]["effective_sparsity"] == pytest.approx(0.93) and agg.iloc[0]["achieved_sparsity"] == 0.9
    report = build_report(tmp_path / "d", tmp_path / "rep", figures=False, progress=False, log=lambda s: None)
    assert "| d=0.1 |" in report.markdown and "[d_eff 0.07]" in report.markdown
    assert "d\\_eff 0.07" in (tmp_path / "rep" / "table.tex").read_text()
