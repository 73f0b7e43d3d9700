"""A command's outputs: where it will write, checked before its work starts (folders that can be made and
written, files that are not folders and replace nothing unasked, never one of the command's inputs, named with
the extension of what they hold; the checks create nothing and leave nothing behind: :func:`plan_out` is the
check every command runs on its ``--out``), and each file written atomically (:func:`atomic_write`)."""

from __future__ import annotations

import glob
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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


#: An input of a command: (its name in a message, e.g. "the --weights file"; its path, a glob, or None).
Input = tuple[str, "str | os.PathLike[str] | None"]


@dataclass(frozen=True)
class PlannedOut:
    """An ``--out`` that passed :func:`plan_out`: its path and, if missing, the folder above it, which writing
    it will create (with any missing parents)."""

    path: Path
    creates: Path | None = None

    def say_created(self, say: Callable[[str], object] | None = None) -> None:
        """Say ``created folder X`` (on stderr by default) if the folder writing the output was to create
        exists now."""
        if self.creates is not None and self.creates.is_dir():
            (say or (lambda line: print(line, file=sys.stderr)))(f"created folder {self.creates}")


def plan_out(path: str | os.PathLike[str], *, folder: bool = False, inputs: Iterable[Input] = (),
             suffixes: tuple[str, ...] = (), what: str = "output", replace: bool = True, flag: str = "--out",
             may_hold_inputs: bool = False) -> PlannedOut:
    """Check the output ``path`` before the work, in one line each (UserError): not one of ``inputs`` (the same
    file by resolved path, or, for an input folder, nothing inside it; a ``folder`` output also holds none of
    them unless ``may_hold_inputs``); a file output ends in one of ``suffixes`` (what it holds is ``what``);
    and :func:`check_out_file` or :func:`check_out_dir`. Returns the path and the folder it will create."""
    out = Path(path).expanduser()
    for role, given in inputs:
        for item in _input_paths(given):
            _check_not_input(out, role, item, flag, folder and not may_hold_inputs)
    if folder:
        check_out_dir(out, flag=flag)
    else:
        check_out_file(out, replace=replace, flag=flag, suffix=suffixes[0] if suffixes else "")
    if suffixes and not folder and not out.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        ends = " or ".join(suffixes)
        raise UserError(f"{flag} {path}: {what} is written as {ends}, so the name must end in {ends} "
                        f"(e.g. {out.with_suffix(suffixes[0]) if out.suffix else str(out) + suffixes[0]})")
    return PlannedOut(out, None if out.parent.exists() else out.parent)


def _input_paths(given: str | os.PathLike[str] | None) -> list[Path]:
    """The existing paths an input names (a glob: its matches); none for what names no path (``sample``)."""
    if given is None:
        return []
    text = os.path.expanduser(os.fspath(given))
    if os.path.lexists(text):
        return [Path(text)]
    return [Path(m) for m in glob.glob(text, recursive=True)] if glob.has_magic(text) else []


def _check_not_input(out: Path, role: str, item: Path, flag: str, refuse_holding: bool) -> None:
    """UserError if writing ``out`` would replace or write into the input ``item``."""
    out_abs, item_abs = out.resolve(), item.resolve()
    same = out_abs == item_abs
    if not same and out.exists():
        try:
            same = os.path.samefile(out, item)  # a hard link, or another name of the same file
        except OSError:
            same = False
    if same:
        raise UserError(f"{flag} {out} is {role} {item}, which this command reads; choose another {flag}")
    if item_abs.is_dir() and out_abs.is_relative_to(item_abs):
        raise UserError(f"{flag} {out} is inside {role} {item}, which this command reads; choose a {flag} "
                        "outside it")
    if refuse_holding and item_abs.is_relative_to(out_abs):
        raise UserError(f"{flag} {out} holds {role} {item}, which this command reads; choose another {flag}")


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
