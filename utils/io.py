"""Atomic file writes, and torch files that carry a digest of their own content.

Atomic: write to a temporary file in the same folder, fsync, then rename, so a process killed at any
moment leaves either the complete previous file or the complete new one.  Files get the permissions
the user's umask gives (0644 under the usual 0022), as files made with ``open`` would.  A write that
fails (a full disk, a missing permission) raises :class:`WriteError` naming the file and the free space.

Torch files (:func:`save_torch`) are ordinary ``torch.save`` archives, so ``torch.load(path,
weights_only=True)`` still reads them, whose ZIP comment holds ``pai-sha256:<hex>``: the SHA-256 of the
archive as torch wrote it.  :func:`load_torch` checks it before loading and raises
:class:`IntegrityError` naming the file for a damaged, truncated or empty one (torch itself loads an
archive with flipped bytes in a tensor without a word).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import warnings
from pathlib import Path
from typing import IO, Any, Callable

import torch

DIGEST_TAG = b"pai-sha256:"
_COMMENT = len(DIGEST_TAG) + 64                # the ZIP comment: tag + hex digest
_EOCD = b"PK\x05\x06"                         # ZIP end-of-central-directory record, 22 bytes + comment
_UMASK_LOCK = threading.Lock()


class WriteError(OSError):
    """A file could not be written; the message names it, the cause and the free space there."""


class IntegrityError(ValueError):
    """A torch file whose content digest is missing or does not match (damaged, truncated, empty, or not
    written by :func:`save_torch`).  ``kind`` is ``"missing"``, ``"mismatch"`` or ``"unreadable"``."""

    def __init__(self, path: str | Path, reason: str, kind: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.kind = Path(path), reason, kind


def _umask() -> int:
    with _UMASK_LOCK:  # the only way to read the umask is to set it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _write_problem(path: Path, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    full = getattr(exc, "errno", None) == errno.ENOSPC or "inline_container" in str(exc) or "No space" in str(exc)
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return f"cannot write {path}: {'the disk is full? ' if full else ''}{type(exc).__name__}: {text} ({free})"


def _is_write_failure(exc: BaseException) -> bool:
    """An OSError, or torch's own words for a write that failed (a full disk: ``inline_container.cc``)."""
    text = str(exc)
    return isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and (
        "inline_container" in text or "PytorchStreamWriter" in text or "file write failed" in text))


def _keep_previous(path: Path, previous: Path) -> None:
    """Make ``previous`` the current content of ``path`` while ``path`` stays in place (a hard link; a
    rename where the file system has no links)."""
    link = previous.with_name(previous.name + ".tmp")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, previous)
    except OSError:
        os.replace(path, previous)


def _atomic(path: str | Path, write: Callable[[IO[bytes]], None], previous: str | Path | None = None) -> None:
    """Write ``path`` atomically; with ``previous``, the file it replaces is kept under that name."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(_write_problem(path, exc)) from exc
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files
        with os.fdopen(fd, "w+b") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if previous is not None and path.exists():
            _keep_previous(path, Path(previous))
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if _is_write_failure(exc) and not isinstance(exc, WriteError):
            raise WriteError(_write_problem(path, exc)) from exc
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None  # NaN is not JSON
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    data = json.dumps(_jsonable(obj), indent=2, sort_keys=False, default=str).encode("utf-8") + b"\n"
    _atomic(path, lambda fh: fh.write(data))


class UnreadableJSON(ValueError):
    """A JSON file that is not UTF-8 text or not valid JSON; the message says what is wrong (the file is
    ``path``; callers that report it name the file and the field)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = str(path), reason


def read_json(path: str | Path) -> Any:
    """The one JSON reader (configs, run-folder files, exports): UTF-8 text (a leading byte-order mark, as
    some editors write, dropped).  A file that is not UTF-8 (UTF-16, binary), a syntax error (with line and
    column), a key given twice in one object (JSON parsers silently keep the last one) or nesting too deep
    to parse raises :class:`UnreadableJSON`; an OSError (missing file, permissions) propagates as it is."""
    raw = Path(path).read_bytes()
    duplicates: list[str] = []
    try:
        text = utf8_text(raw)
        value = json.loads(text, object_pairs_hook=lambda pairs: _unique_object(pairs, duplicates))
        if not duplicates:
            return value
        reason = _duplicate_reason(text, duplicates[0])
    except json.JSONDecodeError as exc:
        reason = f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    except ValueError as exc:  # not UTF-8 text
        reason = str(exc)
    except RecursionError:
        reason = "JSON nested too deeply to read"
    raise UnreadableJSON(path, reason)


def _unique_object(pairs: list[tuple[str, Any]], duplicates: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            duplicates.append(key)
        out[key] = value
    return out


def _duplicate_reason(text: str, key: str) -> str:
    """The message for a key given twice: the key and the line of its second appearance (where it is found)."""
    import re

    found = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    where = f" (again at line {text.count(chr(10), 0, found[1]) + 1})" if len(found) > 1 else ""
    return (f"key {key!r} appears twice in one object{where}: JSON would silently keep the last value; "
            "keep one")


def utf8_text(raw: bytes) -> str:
    """``raw`` decoded as UTF-8 (a leading byte-order mark dropped); a ValueError saying what the bytes look
    like (UTF-16, binary) otherwise."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or _ascii_in_utf16(raw[:2]):
        raise ValueError("the file is UTF-16 text (as some editors save it); save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}): a JSON file is "
                         "UTF-8 text") from None
    if "\x00" in text:
        raise ValueError("a binary file (it holds NUL bytes), not a UTF-8 JSON file")
    return text


def _ascii_in_utf16(head: bytes) -> bool:
    """Do two bytes look like one printable ASCII character in UTF-16 (a NUL beside it)?"""
    return len(head) == 2 and head.count(0) == 1 and 32 <= max(head) < 127


def read_text_file(path: str | Path, what: str, kind: str = "file") -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped); a ValueError ``"<what>: no such <kind>"``
    or ``"<what>: cannot be read as UTF-8 text (...)"`` otherwise (``what`` names the file and field)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{what}: no such {kind}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what}: cannot be read as UTF-8 text ({exc})") from None


CONFIG_FILE_LIMIT = 64 * 2**20
"""The largest file a config may name for :func:`read_regular_text` to read (64 MiB)."""

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _not_regular(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "a special file")


def _check_regular(info: os.stat_result, what: str, limit: int) -> None:
    mib = f"{limit / 2**20:g} MiB"
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what}: not a regular file but {_not_regular(info.st_mode)}; name a regular file "
                         f"of at most {mib}")
    if info.st_size > limit:
        raise ValueError(f"{what}: {info.st_size:,} bytes, over the {mib} limit on files a config names")


def read_regular_text(path: str | Path, what: str, limit: int = CONFIG_FILE_LIMIT) -> str:
    """The UTF-8 text of the regular file ``path`` (a leading byte-order mark dropped), for files a config
    names.  ``os.stat`` first: a directory, FIFO, socket or device is refused without being opened, and so is
    a file over ``limit`` bytes; the open is non-blocking, the opened file is checked again (a path swapped
    in between) and at most ``limit`` bytes are read.  A ValueError ``"<what>: ..."`` otherwise, which never
    quotes the file's content (``what`` names the file and field)."""
    def unreadable(exc: OSError) -> ValueError:
        return ValueError(f"{what}: cannot be read ({exc.strerror or type(exc).__name__})")

    try:
        _check_regular(os.stat(path), what, limit)
    except FileNotFoundError:
        raise ValueError(f"{what}: no such file") from None
    except OSError as exc:
        raise unreadable(exc) from None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise unreadable(exc) from None
    with os.fdopen(fd, "rb") as fh:
        try:
            _check_regular(os.fstat(fh.fileno()), what, limit)
            raw = fh.read(limit + 1)
        except OSError as exc:
            raise unreadable(exc) from None
    if len(raw) > limit:
        raise ValueError(f"{what}: over the {limit / 2**20:g} MiB limit on files a config names")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: not UTF-8 text (an undecodable byte at offset {exc.start})") from None


def json_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The ``*.json`` files of ``folder`` (and its subfolders with ``recursive``), sorted, without hidden
    ones: a name starting with ``.`` (e.g. the ``._name.json`` resource forks macOS leaves on shared
    drives) is never taken for a config.  A folder named ``*.json`` is not a file (with ``recursive`` its
    files are found like any subfolder's); a dangling link named ``*.json`` is listed (reading it fails)."""
    folder = Path(folder)
    found = folder.rglob("*.json") if recursive else folder.glob("*.json")
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and (p.is_file() or (p.is_symlink() and not p.exists())))


def write_bytes(path: str | Path, payload: bytes) -> None:
    _atomic(path, lambda fh: fh.write(payload))


def write_text(path: str | Path, text: str) -> None:
    _atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text: one column per key seen (in first-seen order), nested dicts and lists left out
    (they live in the JSON twin of the file), empty cells for missing or None values."""
    keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (dict, list))))
    lines = [",".join(keys)] + [",".join("" if r.get(k) is None else str(r.get(k)) for k in keys) for r in rows]
    return "\n".join(lines) + "\n"


class _Hashing:
    """A write-only file that hashes what goes through it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.sha = fh, hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def _save_digested(fh: IO[bytes], obj: Any) -> None:
    """``torch.save(obj)`` into ``fh`` with the digest of those bytes as the archive's ZIP comment."""
    hashing = _Hashing(fh)
    torch.save(obj, hashing)
    fh.seek(-22, os.SEEK_END)
    eocd = fh.read(22)
    if eocd[:4] != _EOCD or eocd[-2:] != b"\x00\x00":
        raise RuntimeError("torch.save did not end its archive with an empty ZIP comment")
    fh.seek(-2, os.SEEK_END)
    fh.write(_COMMENT.to_bytes(2, "little") + DIGEST_TAG + hashing.sha.hexdigest().encode())


def save_torch(path: str | Path, obj: Any, *, previous: str | Path | None = None) -> None:
    """``torch.save`` atomically, with the content digest (see the module docstring); with ``previous``,
    the file replaced is kept under that name (e.g. the checkpoint before the newest)."""
    _atomic(path, lambda fh: _save_digested(fh, obj), previous)


def _stored_digest(tail: bytes) -> str | None:
    """The hex digest in the last bytes of a :func:`save_torch` file (comment length + comment), if any."""
    if len(tail) != 2 + _COMMENT or tail[:2] != _COMMENT.to_bytes(2, "little") or not tail[2:].startswith(DIGEST_TAG):
        return None
    return tail[2 + len(DIGEST_TAG):].decode("ascii", "replace")


def _sha256_of_prefix(fh: IO[bytes], length: int) -> Any:
    """A SHA-256 over the first ``length`` bytes of ``fh``, read in 4 MiB chunks."""
    sha = hashlib.sha256()
    fh.seek(0)
    while length > 0:
        chunk = fh.read(min(length, 1 << 22))
        if not chunk:
            break
        sha.update(chunk)
        length -= len(chunk)
    return sha


def file_digest(path: str | Path) -> tuple[str | None, str]:
    """``(stored, actual)``: the digest a :func:`save_torch` file carries (None without one) and the
    SHA-256 of its archive as torch wrote it (the file without the comment, with an empty one)."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(size - 2 - _COMMENT, 0))
        stored = _stored_digest(fh.read())
        if stored is None:
            return None, _sha256_of_prefix(fh, size).hexdigest()
        sha = _sha256_of_prefix(fh, size - 2 - _COMMENT)
        sha.update(b"\x00\x00")  # torch wrote an empty comment: its length, zero
    return stored, sha.hexdigest()


def check_digest(path: str | Path) -> None:
    """Raise :class:`IntegrityError` unless ``path`` carries a content digest that matches it."""
    stored, actual = file_digest(path)
    if stored is None:
        size = Path(path).stat().st_size
        raise IntegrityError(path, "empty file (0 bytes)" if size == 0 else
                             f"no content digest ({size:,} bytes: truncated, damaged, or not written by this "
                             "framework)", "missing")
    if stored != actual:
        raise IntegrityError(path, f"content digest mismatch (the file is damaged: stored {stored[:12]}..., "
                             f"content {actual[:12]}...)", "mismatch")


def load_torch(path: str | Path, map_location: Any = "cpu", *, verify: bool = True) -> Any:
    """``torch.load(path, weights_only=True)``, after :func:`check_digest` unless ``verify`` is false."""
    if verify:
        check_digest(path)
    return torch.load(path, map_location=map_location, weights_only=True)


def read_torch(path: str | Path, map_location: Any = "cpu") -> tuple[Any, IntegrityError | None]:
    """``(content, None)`` for an intact :func:`save_torch` file; ``(content, error)`` for a readable file
    without a digest (an older version's, or another tool's: the caller decides whether its format may
    lack one).  A digest mismatch, or a file without a digest that torch cannot read (truncated, empty),
    raises :class:`IntegrityError`."""
    try:
        return load_torch(path, map_location), None
    except IntegrityError as exc:
        if exc.kind != "missing":
            raise
        missing = exc
    try:
        return load_torch(path, map_location, verify=False), missing
    except Exception as exc:  # noqa: BLE001 - unreadable without a digest: damaged or not a torch file
        raise IntegrityError(path, f"{missing.reason}, and torch cannot read it ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})", "unreadable") from None


def check_undigested(missing: IntegrityError | None, version: Any, current: int, what: str,
                     error: type[Exception]) -> None:
    """A file of the ``current`` version always carries its digest: without one it is damaged (``error``);
    one of an earlier version is used with a warning that it cannot be checked."""
    if missing is None:
        return
    if version == current:
        raise error(f"{what}: damaged ({missing.reason})")
    warnings.warn(f"{what}: version {version} file, written before content digests: it cannot be checked for "
                  "damage; write it again to protect it", stacklevel=3)


def write_failure(path: str | Path, exc: BaseException) -> WriteError:
    """The :class:`WriteError` for ``exc`` (an OSError) met writing ``path``: it names the file, the cause
    and the free space there, as the atomic writers' own errors do."""
    return exc if isinstance(exc, WriteError) else WriteError(_write_problem(Path(path), exc))
