"""utils.io: content digests of torch files, the user's umask, clear write errors, visible config files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from helpers import flip_tensor_byte, truncate

from utils import io
from utils.io import IntegrityError, WriteError, json_files, load_torch, read_torch, save_torch, write_json


def _payload() -> dict:
    return {"w": torch.arange(4096, dtype=torch.float32), "name": "x"}


def test_a_digested_file_is_still_a_plain_torch_file_and_round_trips(tmp_path: Path) -> None:
    save_torch(tmp_path / "a.pt", _payload())
    for blob in (torch.load(tmp_path / "a.pt", weights_only=True), load_torch(tmp_path / "a.pt")):
        assert torch.equal(blob["w"], _payload()["w"]) and blob["name"] == "x"
    stored, actual = io.file_digest(tmp_path / "a.pt")
    assert stored == actual and len(stored) == 64


def test_flipped_truncated_and_empty_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.pt"
    save_torch(path, _payload())
    flip_tensor_byte(path)
    assert not torch.equal(torch.load(path, weights_only=True)["w"], _payload()["w"])  # torch loads it silently
    with pytest.raises(IntegrityError, match=r"a\.pt: content digest mismatch") as err:
        load_torch(path)
    assert err.value.kind == "mismatch"
    save_torch(path, _payload())
    truncate(path)
    with pytest.raises(IntegrityError, match=r"a\.pt: no content digest .*truncated"):
        read_torch(path)
    path.write_bytes(b"")
    with pytest.raises(IntegrityError, match=r"a\.pt: empty file"):
        load_torch(path)
    torch.save(_payload(), path)  # another tool's file: readable, and says it has no digest
    blob, missing = read_torch(path)
    assert blob["name"] == "x" and missing is not None and missing.kind == "missing"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_files_are_written_with_the_users_umask(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        save_torch(tmp_path / "b.pt", _payload())
    finally:
        os.umask(previous)
    for name in ("a.json", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_a_failed_write_names_the_file_and_the_free_space(tmp_path: Path, monkeypatch) -> None:
    save_torch(tmp_path / "c.pt", _payload())

    def full_disk(obj, fh):
        fh.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4160 vs 4096")

    monkeypatch.setattr(io.torch, "save", full_disk)
    with pytest.raises(WriteError, match=r"cannot write .*c\.pt: the disk is full\? .*MiB free there"):
        save_torch(tmp_path / "c.pt", _payload())
    assert load_torch(tmp_path / "c.pt")["name"] == "x"  # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_the_previous_file_is_kept_when_asked(tmp_path: Path) -> None:
    save_torch(tmp_path / "n.pt", {"v": 1}, previous=tmp_path / "p.pt")
    assert not (tmp_path / "p.pt").exists()
    save_torch(tmp_path / "n.pt", {"v": 2}, previous=tmp_path / "p.pt")
    assert load_torch(tmp_path / "n.pt") == {"v": 2} and load_torch(tmp_path / "p.pt") == {"v": 1}


def test_hidden_json_files_are_not_configs(tmp_path: Path) -> None:
    for name in ("b.json", "._b.json", ".hidden/c.json", "sub/a.json", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    assert [p.name for p in json_files(tmp_path)] == ["b.json"]
    assert [p.relative_to(tmp_path).as_posix() for p in json_files(tmp_path, recursive=True)] == ["b.json",
                                                                                                  "sub/a.json"]
