"""compressor.mask_indices (an index file as the mask data) and per_class_samples null (the whole training
subset): the rows used are exactly the given ones, recorded in the run folder, and bad files are refused
with the file and the field named."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import torch

from engine.assemble import build_loaders
from launch.runner import run_config
from runspec import RunSpec
from runspec.folder import Files
from utils.schema import ConfigError

FIELD = "training.compressor.mask_indices"


def _train_rows(spec: RunSpec) -> np.ndarray:
    """The training-subset rows of a digits config with train4val (as data.loaders computes them)."""
    return np.asarray(build_loaders(spec.config, torch.device("cpu")).train.dataset.indices)


def test_index_file_rows_are_used_exactly_and_recorded(make_config, tmp_path):
    base = RunSpec.load(make_config("base"))
    pool = _train_rows(base)
    chosen = [int(i) for i in pool[[7, 3, 100, 42, 5, 64, 11, 250, 9, 1]]]  # any order, kept as given
    index_file = tmp_path / "rows.json"
    index_file.write_text(json.dumps(chosen))
    cfg = make_config("given", **{"training.compressor.mask_indices": str(index_file), "training.num_steps": 1,
                                  "training.compressor.batch_size": 3})
    spec = RunSpec.load(cfg, build=True)
    loaders = build_loaders(spec.config, torch.device("cpu"))
    assert loaders.mask_indices == chosen
    assert list(loaders.mask.dataset.indices) == chosen
    assert [len(y) for _, y in loaders.mask] == [3, 3, 3, 1]

    outcome = run_config(cfg, results=tmp_path / "results", log=lambda s: None)
    assert outcome.status == "completed", outcome
    run_dir = spec.run_dir(tmp_path / "results")
    record = json.loads((run_dir / Files.MASK_INDICES).read_text())
    assert record["indices"] == chosen and record["count"] == 10 and record["source"] == str(index_file)
    assert json.loads((run_dir / Files.RESULTS).read_text())["mask_samples"] == 10

    # the recorded file is itself a valid index file: a second run reuses exactly these rows
    again = make_config("again", **{"training.compressor.mask_indices": str(run_dir / Files.MASK_INDICES)})
    assert build_loaders(RunSpec.load(again, build=True).config, torch.device("cpu")).mask_indices == chosen


def test_drawn_mask_data_is_recorded_too(make_config, tmp_path):
    cfg = make_config("drawn", **{"training.num_steps": 1})
    assert run_config(cfg, results=tmp_path / "r", log=lambda s: None).status == "completed"
    spec = RunSpec.load(cfg)
    record = json.loads((spec.run_dir(tmp_path / "r") / Files.MASK_INDICES).read_text())
    assert record["indices"] == build_loaders(spec.config, torch.device("cpu")).mask_indices
    assert record["count"] == 10 * 5 and record["source"].startswith("per_class_samples=5")


def test_text_file_and_per_class_null(make_config, tmp_path):
    base = RunSpec.load(make_config("base"))
    pool = _train_rows(base)
    text = tmp_path / "rows.txt"
    text.write_text(f"{pool[4]}, {pool[2]}\n{pool[0]}\n")
    spec = RunSpec.load(make_config("txt", **{FIELD: str(text)}), build=True)
    assert build_loaders(spec.config, torch.device("cpu")).mask_indices == [int(pool[4]), int(pool[2]), int(pool[0])]

    whole = RunSpec.load(make_config("all", **{"training.compressor.per_class_samples": None}))
    idx = build_loaders(whole.config, torch.device("cpu")).mask_indices
    assert sorted(idx) == sorted(int(i) for i in pool) and idx != sorted(idx)  # all of it, seeded order
    assert build_loaders(whole.config, torch.device("cpu")).mask_indices == idx


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("[1, 2,", "invalid JSON at line 1"),
    ('{"rows": [1, 2]}', "needs an 'indices' list"),
    ('[1, "two"]', "entry 1 is a string, not an integer"),
    ("[1, 2.5]", "entry 1 is a float, not an integer"),
    ("3 4 x", "entry 2 (line 1) is not an integer"),
    ("[]", "holds no index"),
    ('{"indices": 5}', "must be a list of integers"),
])
def test_bad_files_are_refused_at_validation(make_config, tmp_path, content, message):
    path = tmp_path / "bad_rows.json"
    if content is not None:
        path.write_text(content)
    cfg = make_config("bad", **{FIELD: str(path)})
    with pytest.raises(ConfigError) as err:
        RunSpec.load(cfg, build=True)
    text = str(err.value)
    assert FIELD in text and str(path) in text and message in text, text


def test_rows_outside_the_training_subset_are_refused(make_config, tmp_path):
    spec = RunSpec.load(make_config("base"))
    pool = _train_rows(spec)
    held = sorted(set(range(int(pool.max()) + 1)) - set(int(i) for i in pool))
    assert held, "train4val holds some rows out"
    cases = [([int(pool[0]), 10 ** 6], "entry 1 is 1000000, out of range; valid: 0.."),
             ([-1], "entry 0 is -1, out of range"),
             ([int(pool[0]), held[0]], f"entry 1 is {held[0]}, a row that dataset.train4val holds out"),
             ([int(pool[1]), int(pool[2]), int(pool[1])], f"entry 2 repeats index {int(pool[1])}")]
    for i, (rows, message) in enumerate(cases):
        path = tmp_path / f"rows{i}.json"
        path.write_text(json.dumps(rows))
        given = RunSpec.load(make_config(f"c{i}", **{FIELD: str(path)}), build=True)
        with pytest.raises(ValueError) as err:
            build_loaders(given.config, torch.device("cpu"))
        assert FIELD in str(err.value) and str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_a_run_with_a_bad_file_fails_with_the_reason(make_config, tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[999999]")
    outcome = run_config(make_config("bad", **{FIELD: str(path)}), results=tmp_path / "r", log=lambda s: None)
    assert outcome.status == "failed" and FIELD in (outcome.reason or "") and "out of range" in outcome.reason


# ------------------------------------------------------------------ issue 22.4: config-named files read safely
def _refusal(make_config, path) -> str:
    """The validation error for ``path`` as the index file, from a thread: a read that blocks fails the test."""
    cfg = make_config("special", **{FIELD: str(path)})
    out: dict[str, BaseException] = {}

    def load() -> None:
        try:
            RunSpec.load(cfg, build=True)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            out["exc"] = exc

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), f"validation of {path} blocked"
    assert isinstance(out.get("exc"), ConfigError), out
    return str(out["exc"])


def test_a_fifo_is_refused_without_blocking(make_config, tmp_path):
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    text = _refusal(make_config, fifo)
    assert FIELD in text and str(fifo) in text and "not a regular file" in text and "FIFO" in text, text


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_is_refused_before_reading(make_config):
    text = _refusal(make_config, "/dev/zero")
    assert FIELD in text and "/dev/zero" in text and "not a regular file" in text and "device" in text, text


def test_a_directory_is_refused(make_config, tmp_path):
    text = _refusal(make_config, tmp_path)
    assert FIELD in text and str(tmp_path) in text and "not a regular file" in text and "directory" in text, text


def test_a_too_large_file_is_refused_with_the_limit(make_config, tmp_path):
    big = tmp_path / "rows.txt"
    with open(big, "wb") as fh:
        fh.truncate(64 * 2**20 + 1)  # sparse: no disk space used
    text = _refusal(make_config, big)
    assert FIELD in text and str(big) in text and "64 MiB" in text and len(text) < 2000, text


def test_file_content_never_appears_in_the_error(make_config, tmp_path):
    secret = "root:$6$hunter2SECRETsalt$Qx9:19000:0:99999:7:::"
    for name, content in (("shadow", secret + "\n"), ("shadow.json", json.dumps({"hunter2SECRET": 1})),
                          ("list.json", json.dumps([1, "hunter2SECRET"]))):
        path = tmp_path / name
        path.write_text(content)
        text = _refusal(make_config, path)
        assert FIELD in text and str(path) in text, text
        assert "hunter2SECRET" not in text and "root:" not in text, text
