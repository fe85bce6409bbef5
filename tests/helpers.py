"""Small helpers shared by test modules."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from launch.runner import run_config


def interrupt_after(config: Path, results: Path, epochs: int) -> None:
    """Run ``config`` into ``results`` and stop it like Ctrl-C once ``epochs`` epochs are complete."""

    def stop(done: int, row: dict) -> None:
        if done == epochs:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_config(config, results=results, log=lambda s: None, on_epoch_end=stop)


def flip_tensor_byte(path: Path, offset: int = 0) -> None:
    """Flip one bit in the data of the largest tensor of a torch file, in place: torch still loads it (the
    damage is silent without a digest), with one wrong value."""
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[record.header_offset + 26:record.header_offset + 30])
    start = record.header_offset + 30 + name_len + extra_len
    raw[start + (offset or record.file_size // 2)] ^= 0x40
    path.write_bytes(bytes(raw))


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Keep the first ``fraction`` of the file's bytes (a copy or a write cut short)."""
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * fraction)])
