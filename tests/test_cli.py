"""The command line and batches: validate, run, skip / rerun / force, failures recorded, official form."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from main import main
from utils.io import load_torch, save_torch, write_json


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(folder.glob("*.json"))}


def test_validate_reports_every_problem_and_sets_the_exit_code(make_config, capsys) -> None:
    good = make_config("good")
    make_config("bad", **{"training.compressor.sparsity": 1.5, "model.class": "resnet19",
                          "training.compressor.class": "hutch_diagonal"})
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good.parent)]) == 1
    out = capsys.readouterr().out
    assert "OK       " + str(good) in out
    bad = str(good.parent / "bad.json")
    assert f"{bad}: training.compressor.sparsity: value 1.5 is out of range; valid: [0, 1)" in out
    assert "1 valid, 1 invalid" in out


def test_validate_resolves_names_in_registries(make_config, capsys) -> None:
    bad = make_config("bad", **{"model.class": "resnet19", "training.compressor.class": "snipp"})
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "model.class: unknown model 'resnet19' (did you mean 'resnet18'?)" in out
    assert "training.compressor.class: unknown compressor 'snipp' (did you mean 'snip'?)" in out


def test_validate_reports_a_missing_autosparse_predictor(make_config, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere" / "predictor.pt"
    bad = make_config("autos", **{"training.compressor.class": "autosparse",
                                  "training.compressor.options": {"predictor": str(missing)}})
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert (f"{bad}: training.compressor.options: cannot build criterion 'autosparse': autosparse predictor "
            f"'{missing}': no such file") in out


def test_batch_with_a_broken_config_completes_the_others_and_reruns_skip(make_config, tmp_path: Path,
                                                                         capsys) -> None:
    good = make_config("a_good", **{"training.num_steps": 2})
    make_config("b_broken", **{"dataset.batch_sise": 64})
    make_config("c_crash", **{"training.compressor.per_class_samples": 10_000})  # fails at run time
    configs = good.parent
    before = _digest(configs)
    results = tmp_path / "results"
    assert main(["run", str(configs), "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert "a_good.json" in out and "completed" in out
    assert "FAILED: " in out and "dataset.batch_sise: unknown key (did you mean 'batch_size'?)" in out
    statuses = {json.loads(p.read_text())["config_file"]: json.loads(p.read_text())
                for p in results.rglob("status.json")}
    assert statuses[str(good)]["status"] == "completed"
    broken = statuses[str(configs / "b_broken.json")]
    assert broken["status"] == "failed" and "dataset.batch_sise" in broken["problems"][0]
    crash = statuses[str(configs / "c_crash.json")]
    assert crash["status"] == "failed" and "per_class_samples=10000" in crash["reason"]
    assert "Traceback" in crash["traceback"]
    assert _digest(configs) == before  # the user's files are never modified or moved

    # rerun: the completed run is skipped, the failed ones are tried again
    assert main(["run", str(configs), "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert "already completed" in out and "skipped" in out
    batches = sorted((results / "batches").glob("*.json"))
    assert batches and json.loads(batches[-1].read_text())[0]["status"] == "skipped"


def test_failed_run_is_rerun_and_force_reruns_completed(make_config, tmp_path: Path, capsys) -> None:
    cfg = make_config(**{"training.num_steps": 1})
    results = tmp_path / "r"
    assert main(["run", str(cfg), "--results", str(results)]) == 0
    (status_file,) = results.rglob("status.json")
    status = json.loads(status_file.read_text())
    write_json(status_file, {**status, "status": "failed", "reason": "simulated"})
    assert main(["run", str(cfg), "--results", str(results)]) == 0
    assert json.loads(status_file.read_text())["status"] == "completed"
    assert "skipped" not in capsys.readouterr().out.split("config ")[-1].split("\n")[2]
    assert main(["run", str(cfg), "--results", str(results)]) == 0
    assert "already completed" in capsys.readouterr().out
    assert main(["run", str(cfg), "--results", str(results), "--force"]) == 0
    assert "already completed" not in capsys.readouterr().out


def test_official_command_line_and_output_dir(make_config, tmp_path: Path, monkeypatch) -> None:
    cfg = make_config(**{"training.num_steps": 1, "general.output_dir": str(tmp_path / "outputs")})
    assert main(["--experiment", "pbt", "--params_path", str(cfg.parent)]) == 0
    assert list((tmp_path / "outputs" / "pbt" / "digits" / "digits_cnn" / "snip" / "0.8").glob("seed_0-*"))
    assert main(["--experiment", "irp", "--params_path", str(cfg.parent)]) == 2  # disagrees with the config


def test_end_to_end_records_everything_and_dense_beats_chance(make_config, tmp_path: Path) -> None:
    dense = make_config("dense", **{"training.num_steps": 6, "training.compressor.class": "none",
                                    "training.compressor.sparsity": 0.0, "model.options": {"width": 16}})
    results = tmp_path / "res"
    assert main(["run", str(dense), "--results", str(results)]) == 0
    (run,) = (results / "pbt" / "digits" / "digits_cnn" / "none" / "dense").iterdir()
    files = {p.name for p in run.iterdir()}
    assert {"config.json", "status.json", "environment.json", "history.json", "history.csv", "results.json",
            "mask.pt", "checkpoint.pt", "final_model.pt"} <= files
    res = json.loads((run / "results.json").read_text())
    assert res["final_test_acc"] > 0.8 and res["best_val_test_acc"] > 0.8  # chance is 0.1
    for key in ("final_test_loss", "final_test_precision", "final_test_recall", "final_test_f1",
                "best_val_test_f1", "warmup_seconds", "scoring_seconds", "achieved_sparsity", "layer_density",
                "layer_collapse", "epoch_seconds"):
        assert key in res
    assert res["achieved_sparsity"] == 0.0 and len(res["epoch_seconds"]) == 6
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] and env["device"].startswith("cpu")
    assert json.loads((run / "config.json").read_text())["training"]["compressor"]["class"] == "none"
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 7)) and "val_acc" in history[0]


def test_pruned_run_records_sparsity_density_and_mask(make_config, tmp_path: Path) -> None:
    cfg = make_config(**{"training.num_steps": 1, "training.compressor.sparsity": 0.9})
    assert main(["run", str(cfg), "--results", str(tmp_path)]) == 0
    (run,) = tmp_path.glob("pbt/digits/digits_cnn/snip/0.9/*")
    res = json.loads((run / "results.json").read_text())
    mask = load_torch(run / "mask.pt")
    n = sum(m.numel() for m in mask.values())
    assert res["prunable_parameters"] == n and res["kept_parameters"] == round(0.1 * n)
    assert res["achieved_sparsity"] == pytest.approx(0.9, abs=1 / n)
    assert set(res["layer_density"]) == set(mask) == {"0.weight", "3.weight", "7.weight"}
    final = load_torch(run / "final_model.pt")
    for name, m in mask.items():
        assert torch.count_nonzero(final[name][~m]) == 0


def test_interrupted_atomic_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    save_torch(target, {"epoch": 1})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        save_torch(target, {"epoch": 2, "x": Boom()})
    assert load_torch(target) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind


def test_missing_path_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["run", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_the_official_repository_configs_all_validate(capsys) -> None:
    folder = Path(__file__).resolve().parent.parent / "exp_configs" / "official"
    assert len(list(folder.glob("*.json"))) == 13
    assert main(["validate", str(folder)]) == 0
    assert "13 valid, 0 invalid" in capsys.readouterr().out


def test_a_run_claimed_by_a_live_process_is_reported_busy_and_left_alone(make_config, tmp_path: Path,
                                                                         capsys) -> None:
    """A second process given the same config must not run it at the same time; a lock left by a dead
    process is taken over."""
    import socket
    import subprocess
    import sys

    from launch.runner import run_config
    from runspec import RunSpec
    from utils.locks import lock_path

    cfg_path = make_config("locked", **{"training.num_steps": 1})
    results = tmp_path / "results"
    folder = RunSpec.load(cfg_path).run_dir(results)
    lock = lock_path(folder)
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_json(lock, {"pid": holder.pid, "host": socket.gethostname(), "started": "earlier"})
        out = run_config(cfg_path, results=results)
        assert out.status == "busy"
        assert f"pid {holder.pid}" in out.reason and str(lock) in out.reason
        assert not folder.exists() and lock.exists()  # nothing touched, the holder's lock kept
        assert main(["run", str(cfg_path), "--results", str(results)]) == 1  # not run: not a success
        assert "1 busy in another process" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and taken over; the run completes and releases it
    out = run_config(cfg_path, results=results)
    assert out.status == "completed"
    assert not lock.exists()


def test_the_command_line_loads_no_heavy_library_until_a_command_runs() -> None:
    """`main.py --help` stays instant: building the parser imports neither torch nor pandas."""
    import subprocess
    import sys

    code = ("import sys, main; main.build_parser(); "
            "print(sorted(m for m in ('torch', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# ------------------------------------------------------------------------------------ issue 13: robustness
def test_validate_data_checks_that_each_dataset_is_present(make_config, tmp_path: Path, capsys) -> None:
    good = make_config("digits")
    absent = make_config("cifar", **{"dataset.class": "cifar10", "dataset.root": str(tmp_path / "no_data"),
                                     "model.class": "resnet18", "model.options": {}})
    assert main(["validate", str(good), str(absent)]) == 0  # the shapes are fine
    assert main(["validate", "--data", str(good), str(absent)]) == 1
    out = capsys.readouterr().out.split("valid, 0 invalid")[-1]
    assert f"OK       {good}" in out and f"INVALID  {absent}" in out
    assert f"{absent}: dataset: dataset 'cifar10' cannot be read" in out and "cifar-10-batches-py" in out


def test_validate_never_imports_a_module_that_was_not_allowed(make_config, tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    import sys

    marker = tmp_path / "it_ran"
    (tmp_path / "side_effect_lab.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PAI_ALLOW_MODULES", raising=False)
    cfg = make_config("ext", **{"training.compressor.class": "side_effect_lab:Crit"})
    assert main(["validate", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "module 'side_effect_lab' is not imported, as it was not allowed" in out and "--allow-module" in out
    assert not marker.exists() and "side_effect_lab" not in sys.modules
    try:
        assert main(["validate", str(cfg), "--allow-module", "side_effect_lab"]) == 1  # imported: no class Crit
        assert marker.exists() and "has no attribute 'Crit'" in capsys.readouterr().out
    finally:
        sys.modules.pop("side_effect_lab", None)


def test_a_batch_always_finishes_with_its_summary_and_record(make_config, tmp_path: Path, capsys) -> None:
    good = make_config("a_good", **{"training.num_steps": 1, "general.id": "my_experiment"})
    folder = good.parent
    (folder / "b_binary.json").write_bytes(bytes(range(256)))
    (folder / "c_utf16.json").write_bytes(good.read_text().encode("utf-16"))
    (folder / "d_deep.json").write_text("[" * 50000 + "]" * 50000)
    (folder / "e_dangling.json").symlink_to(tmp_path / "gone.json")
    (folder / "._a_good.json").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    results = tmp_path / "results"
    assert main(["run", str(folder), "--results", str(results)]) == 1
    out = capsys.readouterr().out
    (record,) = (results / "batches").glob("*.json")
    outcomes = {Path(o["config"]).name: o for o in json.loads(record.read_text())}
    assert sorted(outcomes) == ["a_good.json", "b_binary.json", "c_utf16.json", "d_deep.json", "e_dangling.json"]
    assert outcomes["a_good.json"]["status"] == "completed" and outcomes["a_good.json"]["id"] == "my_experiment"
    reasons = {name: o["reason"] for name, o in outcomes.items() if o["status"] == "failed"}
    assert "not UTF-8 text" in reasons["b_binary.json"] and "UTF-16" in reasons["c_utf16.json"]
    assert "nested too deeply" in reasons["d_deep.json"] and "cannot read file" in reasons["e_dangling.json"]
    summary = out[out.rindex("\nconfig "):]
    (row,) = [line for line in summary.splitlines() if line.startswith("a_good.json")]
    assert row.split()[:3] == ["a_good.json", "my_experiment", "completed"]  # general.id is shown
    for name in reasons:  # each FAILED line names its config once
        (line,) = [x for x in summary.splitlines() if x.startswith("FAILED") and name in x]
        assert line.count(name) == 1, line


def test_a_failed_run_resumes_from_its_last_checkpoint_and_restart_starts_over(make_config, tmp_path: Path,
                                                                              capsys) -> None:
    from launch.runner import run_config

    cfg = make_config(**{"training.num_steps": 3})
    reference = run_config(cfg, results=tmp_path / "a", log=lambda s: None)

    def transient(epoch: int, row: dict) -> None:
        if epoch == 2:
            raise OSError(28, "No space left on device")

    failed = run_config(cfg, results=tmp_path / "b", log=lambda s: None, on_epoch_end=transient)
    assert failed.status == "failed" and "No space left" in failed.reason
    folder = Path(failed.run_dir)
    resumed = run_config(cfg, results=tmp_path / "b", log=lambda s: None)
    assert resumed.status == "completed"
    status = json.loads((folder / "status.json").read_text())
    assert status["resumed"] is True and status["attempts"] == 2 and "reason" not in status
    (past,) = status["history"]
    assert past["status"] == "failed" and "No space left" in past["reason"] and "Traceback" in past["traceback"]
    history = json.loads((folder / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]  # epoch 2 was checkpointed before the failure
    a, b = (load_torch(Path(d) / "final_model.pt") for d in (reference.run_dir, resumed.run_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)
    write_json(folder / "status.json", {**status, "status": "failed", "reason": "simulated"})
    assert main(["run", str(cfg), "--results", str(tmp_path / "b"), "--restart"]) == 0
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "completed" and status["resumed"] is False and "history" not in status


@pytest.mark.parametrize("name,content", [("results.json", b'{"final_test_acc": 0.9'), ("results.json", b"[1]"),
                                          ("status.json", b'{"status": "comp'), ("status.json", b'["completed"]'),
                                          ("status.json", b'{"status": "failed", "attempts": "x"}')])
def test_a_damaged_record_in_a_run_folder_never_stops_a_rerun(make_config, tmp_path: Path, name: str,
                                                              content: bytes) -> None:
    from launch.runner import run_config

    cfg = make_config(**{"training.num_steps": 1})
    first = run_config(cfg, results=tmp_path, log=lambda s: None)
    (Path(first.run_dir) / name).write_bytes(content)
    again = run_config(cfg, results=tmp_path, log=lambda s: None)
    assert again.status == "completed" and again.test_acc == first.test_acc
    assert json.loads((Path(first.run_dir) / "results.json").read_text())["final_test_acc"] == first.test_acc


def test_a_full_disk_while_writing_environment_json_fails_that_run_only(make_config, tmp_path: Path,
                                                                        monkeypatch) -> None:
    import errno
    import os

    from launch.runner import run_batch
    from utils import io

    fsync = os.fsync

    def full_for_environment(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".environment.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(io.os, "fsync", full_for_environment)
    a = make_config("a", **{"training.num_steps": 1})
    b = make_config("b", **{"training.num_steps": 1, "general.seed": 1})
    outcomes = run_batch([a], results=tmp_path, log=lambda s: None)
    monkeypatch.setattr(io.os, "fsync", fsync)
    outcomes += run_batch([b], results=tmp_path, log=lambda s: None)
    assert [o.status for o in outcomes] == ["failed", "completed"]
    assert "environment.json: the disk is full?" in outcomes[0].reason and "MiB free there" in outcomes[0].reason
    status = json.loads((Path(outcomes[0].run_dir) / "status.json").read_text())
    assert status["status"] == "failed" and "environment.json" in status["reason"]
    assert len(list((tmp_path / "batches").glob("*.json"))) == 2


def test_two_batches_ending_in_the_same_microsecond_keep_two_records(tmp_path: Path, monkeypatch) -> None:
    from runspec import folder

    monkeypatch.setattr(folder.time, "time", lambda: 1_700_000_000.25)
    first, second = folder.batch_record_path(tmp_path), folder.batch_record_path(tmp_path)
    assert first != second and first.exists() and second.exists() and sorted([first, second]) == [first, second]


def test_run_folder_files_are_readable_by_colleagues(make_config, tmp_path: Path) -> None:
    import os
    import stat

    from launch.runner import run_config

    previous = os.umask(0o022)
    try:
        out = run_config(make_config(**{"training.num_steps": 1}), results=tmp_path, log=lambda s: None)
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in Path(out.run_dir).iterdir() if p.is_file()}
    assert {"config.json", "status.json", "checkpoint.pt", "mask.pt", "results.json"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes
