"""A command's outputs: where it will write, checked before its work starts (folders that can be made and
written, files that are not folders and replace nothing unasked; the checks create nothing and leave nothing
behind), and each file written atomically (:func:`atomic_write`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError


def check_out_dir(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """``path`` as a Path; UserError unless it is a folder, or can be made one, that a file can be written in."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; give a new or existing folder")
    _check_writable(folder, f"{flag} {path}", flag)
    return folder


def check_out_file(path: str | os.PathLike[str], *, replace: bool, flag: str = "--out", suffix: str = "") -> Path:
    """``path`` as a Path; UserError if it is a folder, if it exists and ``replace`` is false, or if its folder
    cannot be made or written. ``suffix`` is the file type, for the message's example name."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name, e.g. {file / 'out'}{suffix}")
    if file.exists() and not replace:
        raise UserError(f"{path} exists; give --force to replace it, or choose another {flag}")
    _check_writable(file.parent, f"{flag} {path}", flag)
    return file


def _check_writable(folder: Path, what: str, flag: str) -> None:
    """UserError unless ``folder`` exists or can be created, and a file can be written in it."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {what}: {existing} is a file, not a folder; choose another {flag}")
    try:  # the real test, whoever we are (root passes os.access on a read-only mount)
        fd, probe = tempfile.mkstemp(prefix=".resnets-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write {what} ({exc.strerror or exc}); choose another {flag}") from None


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (0o644 for umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it into place and fsync
    the folder; if ``write`` raises, the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; the user's umask decides, as for open()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
