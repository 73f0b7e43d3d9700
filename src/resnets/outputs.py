"""Where a command will write, checked before its work starts: folders that can be made and written, files
that are not folders and replace nothing unasked. The checks create nothing and leave nothing behind."""

from __future__ import annotations

import os
import tempfile
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
