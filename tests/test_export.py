"""main.py export: torch-prune and sparse formats round-trip a tiny real run; bad input gives clear errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch.nn.utils import prune

import export
import models
from export.sparse import from_csr, load_sparse, to_csr
from launch.runner import run_config
from main import main
from runspec.folder import Files
from tests.helpers import flip_tensor_byte
from utils.io import load_torch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {
    "general": {"id": "export", "seed": 0, "gpu": {"ngpus": 0}},
    "dataset": {"class": "digits", "batch_size": 64},
    "model": {"class": "digits_cnn", "options": {"width": 8}},
    "training": {"num_steps": 1, "max_batches": 2,
                 "compressor": {"class": "snip", "sparsity": 0.8, "batch_size": 10, "per_class_samples": 2}},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(config file, results root, run folder) of one completed 1-epoch digits run at 80% sparsity."""
    folder = tmp_path_factory.mktemp("export_run")
    config = folder / "tiny.json"
    config.write_text(json.dumps(CONFIG))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = run_config(config, results=folder / "results", log=lambda s: None)
    finally:
        torch.set_num_threads(previous)
    assert out.status == "completed", out.reason
    return config, folder / "results", Path(out.run_dir)


def trained(run_dir: Path) -> torch.nn.Module:
    model = models.build("digits_cnn", num_classes=10, input_shape=(1, 8, 8), width=8)
    model.load_state_dict(load_torch(run_dir / Files.FINAL_MODEL))
    return model.eval()


def test_torch_prune_round_trip_into_a_plain_model(tiny_run, tmp_path: Path, capsys) -> None:
    _, _, run_dir = tiny_run
    out = tmp_path / "tp"
    assert main(["export", str(run_dir), "--format", "torch-prune", "--out", str(out)]) == 0
    assert "torch-prune: wrote torch_prune.pt" in capsys.readouterr().out
    state = torch.load(out / "torch_prune.pt", weights_only=True)
    masks = load_torch(run_dir / Files.MASK)
    final = load_torch(run_dir / Files.FINAL_MODEL)
    # the layout custom_from_mask leaves: weight_orig + weight_mask for every masked parameter, the rest as saved
    reference = trained(run_dir)
    for name, mask in masks.items():
        module, _, attr = name.rpartition(".")
        prune.custom_from_mask(reference.get_submodule(module), attr, mask)
    assert list(state) == list(reference.state_dict())
    for name, mask in masks.items():
        assert name not in state
        assert torch.equal(state[name + "_mask"], mask.float()) and torch.equal(state[name + "_orig"], final[name])
    assert all(torch.equal(state[k], v) for k, v in final.items() if k not in masks)
    # a plain model takes it after prune.identity and computes what the masked network computes
    plain = models.build("digits_cnn", num_classes=10, input_shape=(1, 8, 8), width=8)
    for name in masks:
        module, _, attr = name.rpartition(".")
        prune.identity(plain.get_submodule(module), attr)
    plain.load_state_dict(state)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), trained(run_dir)(x))
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "torch-prune" and manifest["source_run"] == str(run_dir.resolve())
    assert manifest["files"] == {"torch_prune.pt": (out / "torch_prune.pt").stat().st_size}
    assert manifest["dense_bytes"] == (run_dir / Files.FINAL_MODEL).stat().st_size
    assert manifest["size_ratio"] == pytest.approx(manifest["bytes"] / manifest["dense_bytes"])
    assert manifest["model"] == {"class": "digits_cnn", "num_classes": 10, "input_shape": [1, 8, 8],
                                 "options": {"width": 8}}
    assert sorted(manifest["pruned_parameters"]) == sorted(masks)


def test_sparse_round_trip_is_exact_and_smaller(tiny_run, tmp_path: Path) -> None:
    _, _, run_dir = tiny_run
    manifest = export.export_run(run_dir, "sparse", tmp_path / "sp")
    path = tmp_path / "sp" / "sparse_state_dict.pt"
    final = load_torch(run_dir / Files.FINAL_MODEL)
    back = load_sparse(path)
    assert list(back) == list(final)
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in final.items())
    with pytest.warns(UserWarning):  # torch's own note on reading sparse tensors
        raw = torch.load(path, weights_only=True)
    masks = load_torch(run_dir / Files.MASK)
    assert set(raw["shapes"]) == {n for n, m in masks.items() if not m.all()} and raw["shapes"]
    for name, shape in raw["shapes"].items():
        csr = raw["tensors"][name]
        assert csr.layout == torch.sparse_csr and csr.crow_indices().dtype == torch.int32
        assert list(csr.shape) == [shape[0], int(torch.tensor(shape[1:]).prod())]
        assert csr.values().numel() == int(masks[name].sum())  # the kept entries (pruned ones are exact zeros)
    assert manifest["files"]["sparse_state_dict.pt"] == path.stat().st_size
    assert manifest["bytes"] < manifest["dense_bytes"] and manifest["size_ratio"] < 1
    model = models.build("digits_cnn", num_classes=10, input_shape=(1, 8, 8), width=8)
    model.load_state_dict(back)


def test_csr_keeps_kept_zeros_and_stray_non_zeros() -> None:
    weight = torch.zeros(3, 2, 2, 2)
    weight[0, 0, 0, 0], weight[2, 1, 1, 1] = 1.5, -2.0
    keep = torch.zeros_like(weight, dtype=torch.bool)
    keep[1, 0, 1, 0] = True          # kept, but exactly zero
    keep[0, 0, 0, 0] = True
    csr = to_csr(weight, keep)       # weight[2, 1, 1, 1] is not kept but not zero: stored too
    assert csr.shape == (3, 8) and csr.values().numel() == 3
    assert torch.equal(from_csr(csr, [3, 2, 2, 2]), weight)
    bias = torch.tensor([0.0, 3.0, 0.0])
    assert torch.equal(from_csr(to_csr(bias, bias != 0), [3]), bias)


def test_a_config_file_resolves_to_its_run_folder(tiny_run, tmp_path: Path) -> None:
    config, results, run_dir = tiny_run
    manifest = export.export_run(config, "sparse", tmp_path / "a", results=results)
    assert manifest["source_run"] == str(run_dir.resolve())
    with pytest.raises(export.ExportError, match="does not exist.*--results"):
        export.export_run(config, "sparse", tmp_path / "b", results=tmp_path / "elsewhere")


def test_bad_input_gets_a_clear_error(tiny_run, tmp_path: Path, capsys) -> None:
    _, _, run_dir = tiny_run
    assert main(["export", str(tmp_path / "nowhere"), "--format", "sparse", "--out", str(tmp_path / "o")]) == 2
    assert "nowhere: no such run folder or config file" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--format", "sparce", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown export format 'sparce' (did you mean 'sparse'?)" in err and "torch-prune" in err
    (tmp_path / "file").write_text("x")
    with pytest.raises(export.ExportError, match="is not a folder"):
        export.export_run(run_dir, "sparse", tmp_path / "file")

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    status = json.loads((copy / Files.STATUS).read_text())
    (copy / Files.STATUS).write_text(json.dumps({**status, "status": "running"}))
    with pytest.raises(export.ExportError, match=r"not completed \(status.json says 'running'\)"):
        export.load_run(copy)
    (copy / Files.STATUS).write_text(json.dumps(status))
    flip_tensor_byte(copy / Files.MASK)
    with pytest.raises(export.ExportError, match=rf"{re.escape(str(copy / Files.MASK))}: cannot be read"):
        export.load_run(copy)
    (copy / Files.FINAL_MODEL).unlink()
    with pytest.raises(export.ExportError, match=rf"{re.escape(str(copy / Files.FINAL_MODEL))}: missing"):
        export.load_run(copy)
    with pytest.raises(export.ExportError, match="not a run folder"):
        export.load_run(tmp_path)


def test_a_reused_folder_holds_only_the_latest_export(tiny_run, tmp_path: Path) -> None:
    """Issue 22.11: exporting another format into the same folder left the first format's file beside a
    manifest that did not list it."""
    _, _, run_dir = tiny_run
    out = tmp_path / "reused"
    (out / "notes.txt").parent.mkdir(parents=True)
    (out / "notes.txt").write_text("the user's own file")
    assert main(["export", str(run_dir), "--format", "sparse", "--out", str(out)]) == 0
    first = set(json.loads((out / "export.json").read_text())["files"])
    assert main(["export", str(run_dir), "--format", "torch-prune", "--out", str(out)]) == 0
    second = set(json.loads((out / "export.json").read_text())["files"])
    assert first.isdisjoint(second)
    assert {p.name for p in out.iterdir()} == second | {"export.json", "notes.txt"}  # never a file it did not write


def test_export_report_and_status_take_allow_module(tiny_run, tmp_path: Path) -> None:
    """Issue 22.11: the error for a plugin class says to pass --allow-module; export did not have it."""
    _, results, run_dir = tiny_run
    assert main(["export", str(run_dir), "--format", "sparse", "--out", str(tmp_path / "e"),
                 "--allow-module", "my_lab"]) == 0
    assert main(["status", str(results), "--allow-module", "my_lab"]) == 0
    assert main(["report", str(results), "--out", str(tmp_path / "r"), "--no-figures",
                 "--allow-module", "my_lab"]) == 0
