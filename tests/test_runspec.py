"""The run specification: config parsing and validation (defaults, unknown keys, ranges, every problem
reported at once), registry names, experiment sections and the run identity."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from runspec import RunSpec, config_fields
from runspec.config import parse_config
from utils.schema import ConfigError

OFFICIAL = Path(__file__).resolve().parent.parent / "exp_configs" / "official" / "exp_hts.json"


def test_official_layout_parses_with_defaults_filled() -> None:
    spec = RunSpec.load(OFFICIAL)
    cfg = spec.config
    assert cfg.general.id == "exp_hts" and cfg.general.output_dir == "./outputs"
    assert cfg.dataset.name == "cifar10" and cfg.dataset.batch_size == 512 and cfg.dataset.train4val is False
    assert cfg.training.num_steps == 160
    assert cfg.training.optimizer.kwargs.lr_drops == [80, 120]
    assert cfg.training.optimizer.kwargs.lr_drop_factor == pytest.approx(0.2)
    comp = cfg.training.compressor
    assert (comp.name, comp.mask, comp.sparsity, comp.batch_size, comp.per_class_samples) == ("hts", "global", 0.9,
                                                                                             1, 10)
    resolved = spec.to_dict()
    assert resolved["training"]["compressor"]["class"] == "hts"  # JSON keys, not Python field names
    assert resolved["dataset"]["root"] == "./datasets"  # defaults filled in
    assert resolved["training"]["compressor"]["options"]["probes"] == 10  # criterion defaults too
    again, problems = parse_config(resolved)
    assert problems == [] and again == cfg
    assert RunSpec.from_dict(resolved).hash() == spec.hash()  # a config.json reads back to the same run


def test_unknown_key_suggests_the_closest_field(make_config) -> None:
    path = make_config(**{"training.compressor.sparsty": 0.9})
    with pytest.raises(ConfigError) as err:
        RunSpec.load(path)
    (problem,) = err.value.problems
    assert problem.file == str(path)
    assert problem.path == "training.compressor.sparsty"
    assert "did you mean 'sparsity'" in problem.message


def test_every_problem_is_reported_at_once(make_config) -> None:
    path = make_config(**{"training.compressor.sparsity": 1.0, "dataset.batch_size": 0,
                          "training.optimizer.kwargs.scheduler": "linear", "training.compressor.mask": "glob",
                          "general.seed": "zero"})
    with pytest.raises(ConfigError) as err:
        RunSpec.load(path)
    by_path = {p.path: p.message for p in err.value.problems}
    assert set(by_path) == {"training.compressor.sparsity", "dataset.batch_size",
                            "training.optimizer.kwargs.scheduler", "training.compressor.mask", "general.seed"}
    assert "[0, 1)" in by_path["training.compressor.sparsity"]
    assert "[1, inf]" in by_path["dataset.batch_size"]
    assert "'step'" in by_path["training.optimizer.kwargs.scheduler"]
    assert "did you mean 'global'" in by_path["training.compressor.mask"]
    assert "integer" in by_path["general.seed"]


def test_cross_field_and_nested_checks(make_config) -> None:
    path = make_config(**{"training.optimizer.kwargs.lr_drops": [120, 80], "training.optimizer.kwargs.betas": [0.9]})
    with pytest.raises(ConfigError) as err:
        RunSpec.load(path)
    paths = {p.path for p in err.value.problems}
    assert paths == {"training.optimizer.kwargs.lr_drops", "training.optimizer.kwargs.betas"}


def test_quoted_booleans_from_official_configs_are_accepted(make_config) -> None:
    assert RunSpec.load(make_config(**{"dataset.train4val": "false"})).config.dataset.train4val is False
    assert RunSpec.load(make_config(**{"dataset.train4val": "True"})).config.dataset.train4val is True


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"general": {"seed": 0,}}')
    with pytest.raises(ConfigError) as err:
        RunSpec.load(path)
    assert "line 1, column" in str(err.value) and str(path) in str(err.value)


def test_registry_names_and_criterion_options_are_resolved(make_config) -> None:
    path = make_config(**{"model.class": "DIGITS_CNN", "training.compressor.class": "Random",
                          "training.compressor.options": {"seed": 7}})
    cfg = RunSpec.load(path).config
    assert cfg.model.name == "digits_cnn" and cfg.training.compressor.name == "random"
    assert cfg.training.compressor.options == {"seed": 7}
    # defaults of options are filled in
    cfg = RunSpec.load(make_config(**{"training.compressor.class": "random"})).config
    assert cfg.training.compressor.options == {"seed": None}


def test_resolve_reports_unknown_names_and_bad_options_together(make_config) -> None:
    path = make_config(**{"dataset.class": "digitz", "training.compressor.class": "random",
                          "training.compressor.options": {"sed": 1}, "general.experiment": "pbtt"})
    with pytest.raises(ConfigError) as err:
        RunSpec.load(path)
    msgs = {p.path: p.message for p in err.value.problems}
    assert "did you mean 'digits'" in msgs["dataset.class"] and "valid:" in msgs["dataset.class"]
    assert "did you mean 'seed'" in msgs["training.compressor.options.sed"]
    assert "did you mean 'pbt'" in msgs["general.experiment"]
    assert all(p.file == str(path) for p in err.value.problems)


def test_dense_baseline_ignores_template_sparsity(make_config) -> None:
    cfg = RunSpec.load(make_config(**{"training.compressor.class": "none",
                                      "training.compressor.sparsity": 0.9})).config
    assert cfg.training.compressor.sparsity == 0.0


def test_every_field_is_documented() -> None:
    rows = config_fields()
    assert len(rows) > 35 and "training.irp.iterations" in {r[0] for r in rows}  # experiments' own too
    undocumented = [path for path, _, _, help_text in rows if not help_text]
    assert undocumented == []


def test_resolved_config_is_json_serialisable(make_config) -> None:
    spec = RunSpec.load(make_config())
    assert json.loads(json.dumps(spec.to_dict()))["training"]["compressor"]["class"] == "snip"


def test_sections_of_other_experiments_are_checked_but_stay_out_of_the_run(make_config) -> None:
    plain = RunSpec.load(make_config())
    tuned = RunSpec.load(make_config(**{"training.irp.iterations": 3}))
    assert "irp" not in plain.to_dict()["training"] and "pat" not in plain.to_dict()["training"]
    assert plain.hash() == tuned.hash()  # pbt ignores the irp section
    irp = RunSpec.load(make_config(**{"general.experiment": "irp", "training.irp.iterations": 3}))
    assert irp.to_dict()["training"]["irp"]["iterations"] == 3 and "pat" not in irp.to_dict()["training"]
    assert irp.experiment_options.iterations == 3
    with pytest.raises(ConfigError) as err:  # a typo in another experiment's section is still reported
        RunSpec.load(make_config(**{"training.pat.finetune_epoch": 3}))
    assert "did you mean 'finetune_epochs'" in str(err.value)


def test_experiment_cross_field_checks_are_config_problems(make_config) -> None:
    path = make_config(**{"general.experiment": "irp", "training.irp.epochs_per_iteration": 2,
                          "training.irp.rewind_epoch": 3})
    with pytest.raises(ConfigError) as err:
        RunSpec.load(path)
    (problem,) = err.value.problems
    assert problem.path == "training.irp.rewind_epoch" and "valid: 0..2" in problem.message


def test_a_top_level_that_is_not_an_object_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError) as err:
        RunSpec.load(path)
    assert "must be a JSON object" in str(err.value) and str(path) in str(err.value)


NON_FINITE = {"training.optimizer.learning_rate": float("nan"), "training.compressor.sparsity": float("nan"),
              "training.optimizer.kwargs.momentum": float("inf"), "training.grad_clip": float("nan"),
              "training.criterion.kwargs.label_smoothing": float("-inf"), "dataset.val_fraction": float("nan"),
              "training.optimizer.kwargs.lr_drop_factor": float("inf"),
              "training.optimizer.kwargs.w_decay": float("nan"),
              "training.compressor.class": "hts",
              "training.compressor.options": {"temperature": float("nan"), "probes": 2},
              "model.options": {"width": 8, "scale": [1.0, float("inf")]}}


def test_nan_and_infinity_are_refused_in_every_number(make_config) -> None:
    path = make_config(**NON_FINITE)
    assert "NaN" in path.read_text() and "Infinity" in path.read_text()  # what Python's json module accepts
    with pytest.raises(ConfigError) as err:
        RunSpec.load(path)
    where = {p.path: p.message for p in err.value.problems}
    expected = {k for k in NON_FINITE if k not in ("training.compressor.class", "training.compressor.options",
                                                   "model.options")}
    expected |= {"training.compressor.options.temperature", "model.options.scale[1]"}
    assert set(where) == expected
    assert all("is not a finite number" in m for m in where.values())


def test_integers_beyond_what_the_run_can_use_are_refused(make_config) -> None:
    with pytest.raises(ConfigError) as err:
        RunSpec.load(make_config(**{"general.seed": 2**70, "dataset.batch_size": 1e30,
                                    "training.compressor.options": {"seed": 2**63},
                                    "training.compressor.class": "hts"}))
    where = {p.path: p.message for p in err.value.problems}
    assert set(where) == {"general.seed", "dataset.batch_size", "training.compressor.options.seed"}
    assert "out of range" in where["general.seed"] and "out of range" in where["training.compressor.options.seed"]
    assert RunSpec.load(make_config(**{"general.seed": 2**63 - 1})).config.general.seed == 2**63 - 1


def test_fewer_model_outputs_than_dataset_classes_is_a_problem(make_config) -> None:
    from engine.assemble import num_classes

    with pytest.raises(ConfigError) as err:
        RunSpec.load(make_config(**{"model.num_classes": 3}))
    (problem,) = err.value.problems
    assert problem.path == "model.num_classes" and "smaller than the 10 classes of dataset 'digits'" in problem.message
    assert RunSpec.load(make_config(**{"model.num_classes": 12})).config.model.num_classes == 12
    # a dataset whose class count is known only from its files: a clear error when the data is loaded
    spec = RunSpec.load(make_config(**{"dataset.class": "imagefolder", "dataset.options": {"path": "x"},
                                       "model.num_classes": 3}))
    with pytest.raises(ValueError, match="model.num_classes: 3 is smaller than the 10 classes"):
        num_classes(spec.config, SimpleNamespace(num_classes=10))


@pytest.mark.parametrize("content,message", [
    (json.dumps({"general": {"seed": 1}}).encode("utf-16"), "UTF-16"),
    (json.dumps({"general": {"seed": 1}}).encode("utf-16-le"), "UTF-16"),
    (b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X", "binary file"),
    (b'{"general": {"id": "caf\xe9"}}', "not UTF-8 text (byte 0xe9 at offset 23)"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b"null", "must be a JSON object, got null"),
])
def test_a_config_that_cannot_be_read_is_one_clear_problem(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "cfg.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        RunSpec.load(path)
    (problem,) = err.value.problems
    assert message in problem.message and problem.file == str(path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"general": {"seed": 4}}).encode())
    assert RunSpec.load(path).config.general.seed == 4


def test_options_nested_too_deeply_are_refused_not_recursed_into(make_config) -> None:
    deep: list = []
    for _ in range(500):
        deep = [deep]
    with pytest.raises(ConfigError, match="model.options.x.*nested more than 64 levels"):
        RunSpec.load(make_config(**{"model.options": {"x": deep}}))


# ------------------------------------------------------------------------------------------ identity
FROZEN = [  # (config, run folder): a change that moves any of these moves existing runs; do not update lightly
    ({"dataset": {"batch_size": 64, "train4val": True},
      "training": {"num_steps": 15, "optimizer": {"learning_rate": 0.05,
                                                  "kwargs": {"w_decay": 0.0005, "scheduler": "cosine"}},
                   "compressor": {"class": "snip", "sparsity": 0.9, "warmup": 1, "batch_size": 10}}},
     "pbt/digits/digits_cnn/snip/0.9/seed_0-69a6f09d1f"),
    ({"dataset": {"batch_size": 64, "train4val": True},
      "training": {"num_steps": 15, "optimizer": {"learning_rate": 0.05,
                                                  "kwargs": {"w_decay": 0.0005, "scheduler": "cosine"}},
                   "compressor": {"class": "none", "sparsity": 0.9, "warmup": 1, "batch_size": 10}}},
     "pbt/digits/digits_cnn/none/dense/seed_0-58b1fb0a44"),
    ({"general": {"id": "exp_hts", "output_dir": "./outputs", "gpu": {"ngpus": 1, "gpu_id": 0}},
      "dataset": {"class": "cifar10", "batch_size": 512, "num_workers": 2},
      "model": {"class": "resnet18", "num_classes": 10},
      "training": {"num_steps": 160, "optimizer": {"class": "sgd", "learning_rate": 0.03, "kwargs": {
          "momentum": 0.9, "w_decay": 0.0005, "scheduler": "step", "lr_drops": [80, 120], "lr_drop_factor": 0.2}},
          "compressor": {"class": "HTS", "sparsity": 0.9, "options": {"probes": 10}}}},
     "pbt/cifar10/resnet18/hts/0.9/seed_0-4a82d12145"),
    ({"general": {"experiment": "irp"}, "dataset": {"batch_size": 64, "train4val": True},
      "training": {"num_steps": 3, "optimizer": {"learning_rate": 0.05,
                                                 "kwargs": {"w_decay": 0.0005, "scheduler": "cosine"}},
                   "compressor": {"class": "magnitude", "sparsity": 0.98, "warmup": 1, "batch_size": 10},
                   "irp": {"iterations": 5, "epochs_per_iteration": 3, "final_epochs": 3, "schedule": "geometric"}}},
     "irp/digits/digits_cnn/magnitude/0.98/seed_0-2dc3e7cfa7"),
]


@pytest.mark.parametrize("config,folder", FROZEN)
def test_frozen_configs_keep_their_run_folders(config, folder: str) -> None:
    assert RunSpec.from_dict(config).run_path().as_posix() == folder


def test_identity_holds_only_non_default_values_so_new_options_never_move_runs() -> None:
    base = {"training": {"compressor": {"class": "hts", "sparsity": 0.9}}}
    explicit = {"general": {"id": "x", "description": "y", "gpu": {"gpu_id": 3}},  # not identity at all
                "dataset": {"num_workers": 4, "root": "elsewhere", "options": {"test_fraction": 0.2}},  # default
                "training": {"optimizer": {"kwargs": {"momentum": 0.9}},  # the default momentum
                             "compressor": {"class": "hts", "sparsity": 0.9, "warmup": 0,
                                            "options": {"probes": 10, "temperature": 200.0}}}}
    a, b = RunSpec.from_dict(base), RunSpec.from_dict(explicit)
    assert a.identity() == b.identity() == {"training": {"compressor": {"class": "hts", "sparsity": 0.9}}}
    assert a.hash() == b.hash()
    # a value that differs from its default is part of it, wherever it lives
    c = RunSpec.from_dict({"training": {"compressor": {"class": "hts", "sparsity": 0.9, "options": {"probes": 4}}}})
    assert c.identity()["training"]["compressor"]["options"] == {"probes": 4} and c.hash() != a.hash()
    assert c.group_hash() == RunSpec.from_dict({"general": {"seed": 5}, **c.to_dict()}).group_hash()


def test_nondefault_of_a_grown_options_class_is_unchanged() -> None:
    """What makes identities survive new fields: an options class that gains a defaulted field gives the
    same non-default dict for the same settings."""
    from dataclasses import dataclass

    from utils.schema import nondefault, option

    @dataclass
    class Before:
        probes: int = option(10, "")

    @dataclass
    class After(Before):
        new_knob: float = option(0.5, "")

    assert nondefault(Before(probes=4)) == nondefault(After(probes=4)) == {"probes": 4}
    assert nondefault(After(probes=4, new_knob=1.0)) == {"probes": 4, "new_knob": 1.0}
