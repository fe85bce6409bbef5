"""``main.py status`` and ``main.py report`` agree on every run's state (one rule: runspec.folder.read_state)."""

from __future__ import annotations

import json

from test_report import GARBAGE, IMPOSSIBLE, make_run

import main
from launch.status import collect
from reporting import load_runs


def _damaged_folders(root):
    folders = {"good": make_run(root, seed=0, acc=0.8), "failed": make_run(root, seed=1, status="failed"),
               "running": make_run(root, seed=90, status="running"),
               "interrupted": make_run(root, seed=91, status="interrupted")}
    for i, (key, (name, content)) in enumerate(GARBAGE.items(), start=2):
        folders[key] = make_run(root, seed=i, acc=0.8)
        if content is None:
            cfg = json.loads((folders[key] / name).read_text())
            cfg["training"]["compressor"]["sparsity"] = "abc"
            content = json.dumps(cfg).encode()
        (folders[key] / name).write_bytes(content)
    for i, (key, (value, _)) in enumerate(IMPOSSIBLE.items(), start=20):
        folders[key] = make_run(root, seed=i, acc=0.9)
        res = json.loads((folders[key] / "results.json").read_text())
        (folders[key] / "results.json").write_text(json.dumps({**res, key: value}))
    folders["no_results"] = make_run(root, seed=40, acc=0.9)
    (folders["no_results"] / "results.json").unlink()
    folders["no_status"] = make_run(root, seed=41, acc=0.9)
    (folders["no_status"] / "status.json").unlink()
    return folders


def test_status_calls_impossible_values_broken_with_the_reason(tmp_path, capsys):
    folders = _damaged_folders(tmp_path)
    status = collect(tmp_path)
    reasons = {r["run"]: r["reason"] for r in status.broken}
    for key, (_, words) in IMPOSSIBLE.items():
        assert status.states[str(folders[key])] == "broken", key
        assert f"results.json: {words}" in reasons[str(folders[key])], key
    assert "results.json is missing or unreadable" in reasons[str(folders["no_results"])]
    assert status.counts["completed"] == 2  # the good run and the one whose status.json is gone
    assert main.main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"{status.counts['broken']} broken" in text.splitlines()[0]
    assert f"  broken   {folders['final_test_acc']}: results.json: final_test_acc is 17.5" in text


def test_status_and_report_agree_on_every_run(tmp_path):
    folders = _damaged_folders(tmp_path)
    states = collect(tmp_path).states
    runs = load_runs(tmp_path, progress=False).runs
    report_states = dict(zip(runs["run_dir"], runs["status"]))
    assert states == report_states
    assert set(states.values()) == {"completed", "failed", "running", "interrupted", "broken"}
    assert len(states) == len(folders)


def test_status_counts_copies_of_a_run_as_report_does(tmp_path, capsys):
    """A results root copied under a sub-folder: report counts the run once and lists the copy as
    duplicate; status said 2 completed."""
    from test_report import _copy_run

    results = tmp_path / "results"
    run = make_run(results / "a", seed=0, acc=0.95)
    make_run(results / "a", seed=1, acc=0.9)
    copy = _copy_run(run, results / "a", results / "b")
    status = collect(results)
    runs = load_runs(results, progress=False).runs
    assert status.states == dict(zip(runs["run_dir"], runs["status"]))
    assert status.states[str(copy)] == "duplicate" and status.counts["completed"] == 2
    assert main.main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 completed") and ", 1 duplicate" in out.splitlines()[0]
    assert f"duplicate {copy}: the same run" in out
