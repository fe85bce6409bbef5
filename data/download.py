"""Downloads that never leave a truncated file or a bare urllib traceback, and folders created
atomically (a crash leaves no half-filled dataset folder)."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from data.roots import missing_error


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: str | Path, md5: Optional[str], name: str, how: str) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.partial`` and a rename, so a crash never leaves a
    truncated file under the final name) and verify its md5.  Network and checksum failures become a
    :class:`DatasetUnavailable` naming the URL, the destination and how to provide the file by hand."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
    try:
        from tqdm.auto import tqdm

        with urllib.request.urlopen(url, timeout=60) as resp, open(partial, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", disable=None,
                      leave=False) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise missing_error(name, [dest], how, cause=f"download of {url} failed: {reason}") from None
    if md5 is not None:
        got = md5sum(partial)
        if got != md5:
            partial.unlink(missing_ok=True)
            raise missing_error(name, [dest], how, cause=f"download of {url} has md5 {got}, expected {md5} "
                                                         "(corrupted or changed file)")
    os.replace(partial, dest)
    return dest


def atomic_folder(final: Path, build: Callable[[Path], None], subfolder: Optional[str] = None) -> Path:
    """Create folder ``final`` by running ``build(tmp)`` on a fresh temporary sibling and renaming it
    (or its ``subfolder``, e.g. the top folder of an extracted archive) to ``final``.

    A crash while building leaves only the temporary folder (removed by the next attempt), never a
    half-filled ``final``; when another process wins the race, its folder is kept and ours removed.
    """
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    for stale in final.parent.glob(prefix + "*"):
        pid = stale.name[len(prefix):]
        if not (pid.isdigit() and _pid_alive(int(pid))) or int(pid) == os.getpid():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f"{prefix}{os.getpid()}"
    tmp.mkdir()
    try:
        build(tmp)
        source = tmp / subfolder if subfolder else tmp
        try:
            os.rename(source, final)
        except OSError:
            if not final.is_dir():
                raise  # a real failure, not another process finishing first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
