"""Sweep expansion, naming, validation (nothing written on a problem) and overwrite rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import main
from runspec import RunSpec
from sweeps import SweepSpecError, expand, expand_path, parse_set, sweep
from sweeps.grid import split_values


def _base(make_config) -> Path:
    return make_config("base")


def _names(out: Path) -> list[str]:
    return sorted(p.stem for p in out.glob("*.json"))


def test_values_are_json_where_possible_and_brackets_do_not_split():
    assert split_values("[80,120],[60, 90],7") == ["[80,120]", "[60, 90]", "7"]
    axis = parse_set("optimizer.kwargs.lr_drops=[80,120],[60]")
    assert axis.path == "training.optimizer.kwargs.lr_drops"
    assert axis.values == ([80, 120], [60])
    axis = parse_set("compressor.class=snip,random")
    assert axis.values == ("snip", "random")
    assert parse_set("dataset.train4val=true,false").values == (True, False)
    assert parse_set("compressor.sparsity=0.9,0.95").values == (0.9, 0.95)
    assert parse_set('general.description="a,b",c').values == ("a,b", "c")


def test_short_forms_and_full_paths():
    assert expand_path("compressor.sparsity") == "training.compressor.sparsity"
    assert expand_path("training.compressor.sparsity") == "training.compressor.sparsity"
    assert expand_path("optimizer.learning_rate") == "training.optimizer.learning_rate"
    assert expand_path("seed") == "general.seed"
    assert expand_path("general.seed") == "general.seed"
    assert expand_path("dataset.batch_size") == "dataset.batch_size"


@pytest.mark.parametrize("spec", ["compressor.sparsity", "=1,2", "compressor.sparsity=0.9,,0.8",
                                  "compressor.sparsity=0.9,0.9"])
def test_malformed_set_is_refused(spec):
    with pytest.raises(SweepSpecError):
        parse_set(spec)


def test_expansion_count_names_and_dense_once_per_seed():
    base = {"general": {"seed": 0}, "training": {"compressor": {"class": "snip", "sparsity": 0.5,
                                                                  "options": {"seed": 3}}}}
    axes = [parse_set("compressor.class=snip,random,magnitude"), parse_set("compressor.sparsity=0.9,0.95"),
            parse_set("general.seed=0,42,123")]
    points = expand(base, axes, with_dense=True)
    assert len(points) == 3 * 2 * 3 + 3
    dense = [p for p in points if p.dense]
    assert sorted(p.name for p in dense) == ["none_seed0", "none_seed123", "none_seed42"]
    for p in dense:
        assert p.data["training"]["compressor"] == {"class": "none", "sparsity": 0.0, "options": {}}
    first = points[0]
    assert first.name == "snip_sparsity0.9_seed0"
    assert first.data["general"] == {"seed": 0, "id": "snip_sparsity0.9_seed0"}
    assert first.data["training"]["compressor"]["sparsity"] == 0.9
    assert base["training"]["compressor"]["sparsity"] == 0.5  # the base is not modified
    assert len({p.name for p in points}) == len(points)


def test_dense_repeats_over_non_compressor_axes_only():
    axes = [parse_set("compressor.class=snip"), parse_set("compressor.sparsity=0.9,0.95"),
            parse_set("compressor.warmup=0,1"), parse_set("optimizer.learning_rate=0.1,0.05"),
            parse_set("seed=0,1")]
    points = expand({}, axes, with_dense=True)
    dense = sorted(p.name for p in points if p.dense)
    assert dense == ["none_learning_rate0.05_seed0", "none_learning_rate0.05_seed1",
                     "none_learning_rate0.1_seed0", "none_learning_rate0.1_seed1"]
    assert len(points) == 2 * 2 * 2 * 2 + 4


def test_option_fields_keep_their_dict_name_in_file_names():
    points = expand({}, [parse_set("compressor.options.seed=1,2"), parse_set("general.seed=0")])
    assert [p.name for p in points] == ["options-seed1_seed0", "options-seed2_seed0"]


def test_sweep_writes_complete_valid_configs(make_config, tmp_path):
    out = tmp_path / "grid"
    result = sweep(_base(make_config), ["compressor.class=snip,random", "compressor.sparsity=0.5,0.9",
                                        "general.seed=0,1"], out, with_dense=True, log=lambda s: None)
    assert result.ok, result.problems
    assert len(result.written) == 8 + 2
    assert "random_sparsity0.9_seed1" in _names(out) and "none_seed1" in _names(out)
    cfg = RunSpec.load(out / "random_sparsity0.9_seed1.json").config
    assert (cfg.training.compressor.name, cfg.training.compressor.sparsity, cfg.general.seed) == ("random", 0.9, 1)
    assert cfg.model.options == {"width": 8}  # untouched fields come from the base
    assert cfg.general.id == "tiny_random_sparsity0.9_seed1"  # the base's id + the point's name
    assert '"lr_drops": [2],' in (out / "none_seed1.json").read_text()  # short lists stay on one line
    again = sweep(_base(make_config), ["compressor.class=snip,random", "compressor.sparsity=0.5,0.9",
                                       "general.seed=0,1"], out, with_dense=True, log=lambda s: None)
    assert again.ok and len(again.unchanged) == 10 and not again.written


def test_bad_value_writes_nothing_and_names_file_and_field(make_config, tmp_path):
    out = tmp_path / "grid"
    lines: list[str] = []
    result = sweep(_base(make_config), ["compressor.class=snip,snipp", "compressor.sparsity=0.9,1.5"], out,
                   log=lines.append)
    assert not result.ok
    assert not out.exists()
    where = {(Path(p.file).name, p.path) for p in result.problems}
    assert ("snip_sparsity1.5.json", "training.compressor.sparsity") in where
    assert ("snipp_sparsity0.9.json", "training.compressor.class") in where
    assert any("did you mean 'snip'" in p.message for p in result.problems)
    assert any("nothing written" in line for line in lines)


def test_unknown_field_and_bad_criterion_option_are_refused(make_config, tmp_path):
    out = tmp_path / "grid"
    result = sweep(_base(make_config), ["compressor.sparsityy=0.9"], out, log=lambda s: None)
    assert [p.path for p in result.problems] == ["training.compressor.sparsityy"]
    result = sweep(_base(make_config), ["compressor.options.temperature=2"], out, log=lambda s: None)
    assert result.problems and all("options" in p.path for p in result.problems)
    assert not out.exists()


def test_same_experiment_twice_is_a_problem(make_config, tmp_path):
    result = sweep(_base(make_config), ["compressor.class=none", "compressor.sparsity=0.5,0.9"], tmp_path / "g",
                   log=lambda s: None)
    assert len(result.problems) == 1 and "same experiment" in result.problems[0].message
    assert not (tmp_path / "g").exists()


def test_overwrite_refused_unless_asked(make_config, tmp_path):
    out = tmp_path / "grid"
    args = ["compressor.class=snip", "compressor.sparsity=0.5,0.9"]
    assert sweep(_base(make_config), args, out, log=lambda s: None).ok
    target = out / "snip_sparsity0.9.json"
    edited = json.loads(target.read_text())
    edited["training"]["num_steps"] = 99
    target.write_text(json.dumps(edited))
    other = out / "snip_sparsity0.5.json"
    other.unlink()
    result = sweep(_base(make_config), args, out, log=lambda s: None)
    assert [(Path(p.file).name, "--overwrite" in p.message) for p in result.problems] == [(target.name, True)]
    assert json.loads(target.read_text())["training"]["num_steps"] == 99
    assert not other.exists()  # nothing written at all
    result = sweep(_base(make_config), args, out, overwrite=True, log=lambda s: None)
    assert result.ok and result.overwritten == [target] and result.written == [other]
    assert json.loads(target.read_text())["training"]["num_steps"] == 3


def test_cli_sweep(make_config, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main.main(["sweep", str(_base(make_config)), "--set", "compressor.sparsity=0.5,0.9",
                    "--set", "seed=0,1", "--out", str(out), "--with-dense"])
    assert rc == 0
    assert _names(out) == ["none_seed0", "none_seed1", "sparsity0.5_seed0", "sparsity0.5_seed1",
                           "sparsity0.9_seed0", "sparsity0.9_seed1"]
    assert "6 configs" in capsys.readouterr().out
    rc = main.main(["sweep", str(_base(make_config)), "--set", "compressor.sparsity=2", "--out",
                    str(tmp_path / "bad")])
    assert rc == 1 and not (tmp_path / "bad").exists()


def test_values_that_give_the_same_file_name_are_refused(make_config, tmp_path):
    result = sweep(_base(make_config), ['general.description="a b","a-b"'], tmp_path / "g", log=lambda s: None)
    messages = [p.message for p in result.problems]
    assert any("several grid points map to this file name" in m for m in messages)
    assert any("same experiment" in m for m in messages)  # the description does not change results either
    assert not (tmp_path / "g").exists()


def test_cli_dry_run_validates_and_lists_but_writes_nothing(make_config, tmp_path, capsys):
    out = tmp_path / "dry"
    rc = main.main(["sweep", str(_base(make_config)), "--set", "compressor.sparsity=0.5,0.9", "--out", str(out),
                    "--dry-run"])
    assert rc == 0 and not out.exists()
    assert "2 configs" in (printed := capsys.readouterr().out) and "would write 2 new" in printed
    rc = main.main(["sweep", str(_base(make_config)), "--set", "compressor.sparsity=2", "--out", str(out),
                    "--dry-run"])
    assert rc == 1 and not out.exists()  # a dry run still validates every point


def test_the_sweep_help_lists_every_alias_and_short_form(capsys) -> None:
    """``main.py sweep --help`` is generated from sweeps.grid's tables: a new alias is documented at once."""
    import main
    from sweeps.grid import ALIASES, SHORTCUTS

    with pytest.raises(SystemExit):
        main.main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(f"{alias} = {full}" in text for alias, full in ALIASES.items())
    assert all(f"{short}.X = {full}.X" in text for short, full in SHORTCUTS.items())


def test_a_grid_with_very_long_file_names_is_written_whole_with_unique_short_names(make_config, tmp_path):
    """Issue 22.11: a file name longer than the file system allows used to leave part of the grid."""
    from sweeps import write_sweep

    base = json.loads(_base(make_config).read_text())
    points = expand(base, [parse_set("seed=0,1,2")])
    for i, p in enumerate(points):  # e.g. many axes with long values: names of 300+ bytes
        p.name = "é" * 150 + f"_{i}"
    out = tmp_path / "grid"
    result = write_sweep(points, out)
    assert result.ok and len(result.written) == 3
    names = [p.name for p in out.glob("*.json")]
    assert len(set(names)) == 3 and all(len(n.encode()) <= 255 for n in names)
    assert sorted(RunSpec.load(p).config.general.seed for p in out.glob("*.json")) == [0, 1, 2]
    assert write_sweep(points, out).unchanged  # the same names again


def test_a_write_that_fails_mid_grid_leaves_the_folder_as_it_was(make_config, tmp_path, monkeypatch):
    import sweeps.write as write_module

    out = tmp_path / "grid"
    calls = []

    def full_disk(path, text):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        Path(path).write_text(text)

    monkeypatch.setattr(write_module, "write_text", full_disk)
    result = sweep(_base(make_config), ["seed=0,1,2,3"], out, log=lambda s: None)
    assert not result.ok and "No space left on device" in str(result.problems[0])
    assert list(out.iterdir()) == []  # no config and no temporary file left
