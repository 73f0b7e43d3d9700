"""The CIFAR-10 sample shipped inside the package, extracted safely into the cache on first use."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from importlib import resources
from pathlib import Path, PurePosixPath

from ..errors import UserError
from .cache import md5_file, resolve_cache_dir

SAMPLE_NAME = "cifar10-sample.tar.gz"


def sample_archive() -> Path:
    """Path of the shipped sample archive (a gzipped tar of JPEGs in train/ and test/ folders)."""
    path = Path(str(resources.files("resnets") / "assets" / SAMPLE_NAME))
    if not path.is_file():
        raise UserError(f"the shipped sample {path} is missing; reinstall resnets")
    return path


def check_members(tar: tarfile.TarFile, archive: Path) -> None:
    """UserError unless every member is a plain file or folder with a relative path inside the archive."""
    for member in tar.getmembers():
        parts = PurePosixPath(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or not (member.isfile() or member.isdir()):
            raise UserError(f"unsafe member {member.name!r} in {archive}")


def extract_sample(cache_dir: str | os.PathLike[str] | None = None, archive: Path | None = None) -> Path:
    """Folder holding the extracted sample (train/, test/), extracting it once per archive version."""
    archive = archive or sample_archive()
    target = resolve_cache_dir(cache_dir) / "sample" / md5_file(archive)[:16]
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            check_members(tar, archive)
            tar.extractall(tmp, filter="data")
        (tmp / ".complete").write_text("ok\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / ".complete").is_file():
                raise
    except tarfile.TarError as exc:
        raise UserError(f"cannot extract {archive}: {exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
