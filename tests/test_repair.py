"""A completed run whose config.json, mask.pt, final_model.pt or results.json is damaged is rebuilt from its
intact checkpoint by a plain rerun, without training again; with the checkpoint damaged too the rerun
refuses and says to use --force (issue 22, item 7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch

import main
from runspec import RunSpec
from runspec.folder import Files
from tests.helpers import flip_tensor_byte, truncate
from utils.io import load_torch

METRICS = ("final_test_acc", "final_test_loss", "best_val_test_acc", "best_val_test_loss", "sparsity",
           "epochs", "epoch_seconds")


@pytest.fixture
def done(make_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """A completed tiny run: (config, results root, run folder, copies of its files)."""
    config, root = make_config(), tmp_path / "results"
    assert main.main(["run", str(config), "--results", str(root)]) == 0
    capsys.readouterr()
    run_dir = RunSpec.load(config).folder(root).path
    assert (run_dir / Files.CHECKPOINT).exists()
    keep = {name: (run_dir / name).read_bytes() for name in
            (Files.CONFIG, Files.MASK, Files.FINAL_MODEL, Files.RESULTS, Files.HISTORY)}
    return config, root, run_dir, keep


def _rerun(config: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main.main(["run", str(config), "--results", str(root)])
    return code, capsys.readouterr().out


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _assert_repaired(run_dir: Path, keep: dict[str, bytes], out: str, damaged: str) -> None:
    assert "epoch " not in out, "the repair trained again"
    assert (run_dir / Files.HISTORY).read_bytes() == keep[Files.HISTORY]
    assert json.loads((run_dir / Files.CONFIG).read_bytes()) == json.loads(keep[Files.CONFIG])
    mask, model = (load_torch(run_dir / name) for name in (Files.MASK, Files.FINAL_MODEL))
    assert _tensors_equal(mask, torch.load(_tmp_copy(run_dir, keep[Files.MASK]), weights_only=True))
    assert _tensors_equal(model, torch.load(_tmp_copy(run_dir, keep[Files.FINAL_MODEL]), weights_only=True))
    new, old = json.loads((run_dir / Files.RESULTS).read_bytes()), json.loads(keep[Files.RESULTS])
    assert {k: new.get(k) for k in METRICS} == {k: old.get(k) for k in METRICS}
    status = json.loads((run_dir / Files.STATUS).read_bytes())
    assert status["status"] == "completed"
    assert any("repaired" in n and damaged in n for n in status.get("notes") or []), status.get("notes")
    assert "repaired" in out and damaged in out


def _tmp_copy(run_dir: Path, raw: bytes) -> Path:
    path = run_dir.parent / "original.pt"
    path.write_bytes(raw)
    return path


def test_a_truncated_config_is_repaired_without_training(done, capsys) -> None:
    config, root, run_dir, keep = done
    truncate(run_dir / Files.CONFIG)
    code, out = _rerun(config, root, capsys)
    assert code == 0, out
    _assert_repaired(run_dir, keep, out, Files.CONFIG)


def test_a_flipped_byte_in_the_mask_is_repaired_without_training(done, capsys) -> None:
    config, root, run_dir, keep = done
    flip_tensor_byte(run_dir / Files.MASK)
    code, out = _rerun(config, root, capsys)
    assert code == 0, out
    _assert_repaired(run_dir, keep, out, Files.MASK)
    assert (run_dir / Files.MASK).read_bytes() == keep[Files.MASK]


def test_a_missing_final_model_is_repaired_without_training(done, capsys) -> None:
    config, root, run_dir, keep = done
    (run_dir / Files.FINAL_MODEL).unlink()
    code, out = _rerun(config, root, capsys)
    assert code == 0, out
    _assert_repaired(run_dir, keep, out, Files.FINAL_MODEL)


def test_impossible_results_are_not_skipped_but_repaired(done, capsys) -> None:
    config, root, run_dir, keep = done
    results = json.loads(keep[Files.RESULTS])
    (run_dir / Files.RESULTS).write_text(json.dumps({**results, "final_test_acc": 7.5}))
    code, out = _rerun(config, root, capsys)
    assert code == 0, out
    _assert_repaired(run_dir, keep, out, Files.RESULTS)


def test_an_intact_completed_run_is_still_skipped(done, capsys) -> None:
    config, root, run_dir, keep = done
    code, out = _rerun(config, root, capsys)
    assert code == 0 and "1 skipped" in out and "repaired" not in out
    assert (run_dir / Files.MASK).read_bytes() == keep[Files.MASK]


@pytest.mark.parametrize("checkpoint", ["damaged", "missing"])
def test_without_an_intact_checkpoint_the_rerun_refuses_and_says_force(done, capsys, checkpoint: str) -> None:
    config, root, run_dir, keep = done
    flip_tensor_byte(run_dir / Files.MASK)
    if checkpoint == "damaged":
        flip_tensor_byte(run_dir / Files.CHECKPOINT)
    else:
        (run_dir / Files.CHECKPOINT).unlink()
    damaged_checkpoint = (run_dir / Files.CHECKPOINT).read_bytes() if checkpoint == "damaged" else None
    code, out = _rerun(config, root, capsys)
    assert code != 0, out
    assert "--force" in out and Files.MASK in out and "epoch " not in out
    assert (run_dir / Files.HISTORY).read_bytes() == keep[Files.HISTORY]
    if damaged_checkpoint is not None:  # left where it is, for the user to look at
        assert (run_dir / Files.CHECKPOINT).read_bytes() == damaged_checkpoint
    status = json.loads((run_dir / Files.STATUS).read_bytes())
    assert any("--force" in n and Files.MASK in n for n in status.get("notes") or []), status.get("notes")
    # --force still trains it again from scratch
    assert main.main(["run", str(config), "--results", str(root), "--force"]) == 0
    assert "epoch " in capsys.readouterr().out


def test_the_launchers_plan_sends_a_damaged_completed_run_to_be_repaired(done) -> None:
    """``--launcher local`` / ``slurm`` plan first: a sound completed run is left out, a damaged one is a task
    (which repairs it), and ``--restart`` never deletes a completed run's folder."""
    from launch.submit import plan

    config, root, run_dir, _ = done
    assert plan([config], str(root), force=False).completed == [config]
    (run_dir / Files.FINAL_MODEL).unlink()
    damaged = plan([config], str(root), force=False, restart=True)
    assert damaged.todo == [config] and damaged.completed == []
    assert (run_dir / Files.CHECKPOINT).exists()
