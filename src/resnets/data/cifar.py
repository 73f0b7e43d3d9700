"""CIFAR-10/100 in the official "python version" format: safe reading, and download with a checksum.

The official files are pickles. They are read with an unpickler that refuses every global except the few
numpy names an ndarray needs, so a tampered archive cannot run code. Archives are read in one streaming
pass, without extracting to disk, and under caps: a member is read only if it is no larger than its data set's
largest official one allows (``max_member_bytes``: 48 MiB for CIFAR-10, 192 MiB for CIFAR-100; its class names
1 MiB), and the archive may decompress to at most :data:`MAX_ARCHIVE_BYTES`.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..outputs import atomic_write
from .cache import md5_file, resolve_cache_dir
from .tars import CappedTarInfo, HeaderTooLarge, StreamTooLarge, check_end
from .tensors import ImageTensors

#: Where the official archives are downloaded from; ``$RESNETS_CIFAR_URL`` or ``base_url=`` override it.
DEFAULT_BASE_URL = "https://www.cs.toronto.edu/~kriz"

# name -> (archive file, md5 of the archive, folder inside it, train members, test member, meta member,
#          labels key, class-names key)
DATASETS: dict[str, dict[str, Any]] = {
    "cifar10": {"archive": "cifar-10-python.tar.gz", "md5": "c58f30108f718f92721af3b95e74349a",
                "folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "labels": b"labels",
                "names": b"label_names", "max_member_bytes": 48 << 20},
    "cifar100": {"archive": "cifar-100-python.tar.gz", "md5": "eb9058c3a382ffc7106e4002c42a8d85",
                 "folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "labels": b"fine_labels", "names": b"fine_label_names", "max_member_bytes": 192 << 20},
}
# The official members are at most 31,035,704 bytes (CIFAR-10's batches of 10,000 images) and 155,249,918 bytes
# (CIFAR-100's train, 50,000 images); their class names under 2 kB.
#: Largest class-name member (``batches.meta``, ``meta``) read.
MAX_META_BYTES = 1 << 20
#: The most an archive may decompress to, in bytes: the official tars are about 186 MB each.
MAX_ARCHIVE_BYTES = 512 << 20

# The only globals an official CIFAR pickle (or one re-pickled by Python 3 / current numpy) needs:
# numpy's ndarray reconstruction, and _codecs.encode, which protocol-2 pickles from Python 3 use for bytes.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy names in ``_ALLOWED_GLOBALS``; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        import importlib

        return getattr(importlib.import_module(target[0]), target[1])


def safe_unpickle(data: bytes, source: str) -> dict[bytes, Any]:
    """Parse a CIFAR pickle without running code; UserError (naming ``source``) if it is not one."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise UserError(f"{source}: not a valid CIFAR pickle ({exc})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise UserError(f"{source}: not a valid CIFAR pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{source}: not a valid CIFAR pickle (top level is {type(obj).__name__}, not dict)")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _batch_arrays(batch: dict[bytes, Any], labels_key: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get(b"data"), batch.get(labels_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{source}: 'data' must be a uint8 array of shape (N, 3072)")
    labels = np.asarray(labels, dtype=np.int64) if labels is not None else None
    if labels is None or labels.shape != (data.shape[0],):
        raise UserError(f"{source}: '{labels_key.decode()}' must hold one label per image")
    return data, labels


def _names(meta: dict[bytes, Any], key: bytes, source: str) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list) or not names:
        raise UserError(f"{source}: missing class names '{key.decode()}'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _read_members(location: Path, spec: dict[str, Any], wanted: list[str]) -> dict[str, bytes]:
    """Raw bytes of the wanted member files from an archive or an extracted folder, each read under its cap."""
    def cap(name: str) -> int:
        return MAX_META_BYTES if name == spec["meta"] else spec["max_member_bytes"]

    def too_large(where: str, size: int, name: str, shown: str) -> UserError:
        return UserError(f"{where}: {shown} holds {size:,} bytes, over the {cap(name):,}-byte limit for a "
                         f"{spec['folder']} member (the official ones are smaller): it is not the official file; "
                         f"download it again (resnets train --data {_name_of(spec)} --download)")

    if location.is_dir():
        folder = location / spec["folder"] if (location / spec["folder"]).is_dir() else location
        out = {}
        for name in wanted:
            path = folder / name
            if not path.is_file():
                raise UserError(f"{path} not found (expected the official {spec['folder']} folder)")
            if path.stat().st_size > cap(name):
                raise too_large(str(folder), path.stat().st_size, name, name)
            out[name] = path.read_bytes()
        return out
    out = {}
    try:
        with tarfile.open(location, "r|gz", tarinfo=CappedTarInfo) as tar:
            for member in tar:
                check_end(member, MAX_ARCHIVE_BYTES)
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in out:
                    if member.size > cap(base):
                        raise too_large(f"archive {location}", member.size, base, member.name[:200])
                    fobj = tar.extractfile(member)
                    assert fobj is not None
                    out[base] = fobj.read()
    except (HeaderTooLarge, StreamTooLarge) as exc:
        raise UserError(f"archive {location}: {exc}; it is not the official archive: download it again "
                        f"(resnets train --data {_name_of(spec)} --download)") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read archive {location} ({exc or type(exc).__name__}): it is damaged or "
                        f"incomplete; download it again (resnets train --data {_name_of(spec)} --download)") from None
    missing = [n for n in wanted if n not in out]
    if missing:
        raise UserError(f"archive {location} lacks {', '.join(missing)}")
    return out


def _name_of(spec: dict[str, Any]) -> str:
    return next((name for name, entry in DATASETS.items() if entry["folder"] == spec["folder"]), "cifar10")


def find_cifar(root: Path, name: str) -> Path | None:
    """The archive or extracted folder of ``name`` at ``root`` (itself, or inside it), if there is one."""
    spec = DATASETS[name]
    if root.is_file():
        return root
    for candidate in (root / spec["folder"], root / spec["archive"]):
        if candidate.exists():
            return candidate
    if (root / spec["meta"]).is_file():
        return root
    return None


def load_cifar(root_or_archive: str | os.PathLike[str] | None, name: str = "cifar10", train: bool = True, *,
               download: bool = False, cache_dir: str | os.PathLike[str] | None = None,
               base_url: str | None = None) -> ImageTensors:
    """One split of CIFAR-10 or CIFAR-100 (fine labels) from the official python archive or its folder.

    ``root_or_archive`` is the ``.tar.gz``, the extracted folder, or a folder holding either; None means
    ``<cache dir>/cifar``. With ``download=True`` a missing archive is downloaded there and its MD5 checked.
    """
    if name not in DATASETS:
        raise UserError(f"unknown CIFAR data set {name!r}; expected one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    root = Path(root_or_archive) if root_or_archive is not None else resolve_cache_dir(cache_dir) / "cifar"
    location = find_cifar(root, name)
    if location is None:
        if not download:
            raise UserError(f"{name} not found at {root}; fetch it once with: resnets train --data {name} "
                            f"--download (Python: download=True), or give the path of {spec['archive']}")
        location = download_cifar(name, root, base_url=base_url)
    split = spec["train"] if train else spec["test"]
    raw = _read_members(location, spec, [*split, spec["meta"]])
    classes = _names(safe_unpickle(raw[spec["meta"]], f"{location}:{spec['meta']}"), spec["names"],
                     f"{location}:{spec['meta']}")
    arrays, labels = [], []
    for member in split:
        source = f"{location}:{member}"
        data, lab = _batch_arrays(safe_unpickle(raw[member], source), spec["labels"], source)
        if lab.size and (lab.min() < 0 or lab.max() >= len(classes)):
            raise UserError(f"{source}: labels outside 0..{len(classes) - 1}")
        arrays.append(data)
        labels.append(lab)
    images = torch.from_numpy(np.concatenate(arrays).reshape(-1, 3, 32, 32).copy())
    return ImageTensors(images, torch.from_numpy(np.concatenate(labels)), classes)


def download_cifar(name: str, dest_dir: str | os.PathLike[str], *, base_url: str | None = None,
                   md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download the official archive of ``name`` into ``dest_dir``: temp file, MD5 check, then rename.

    ``md5`` overrides the official checksum (for mirrors and tests).
    """
    spec = DATASETS[name]
    expected = md5 or spec["md5"]
    base = base_url or os.environ.get("RESNETS_CIFAR_URL") or DEFAULT_BASE_URL
    url = f"{base.rstrip('/')}/{spec['archive']}"
    target = Path(dest_dir) / spec["archive"]

    def fetch(tmp: str) -> None:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                out.write(block)
        got = md5_file(tmp)
        if got != expected:
            raise UserError(f"checksum mismatch for {url}: md5 {got}, expected {expected}; "
                            "the download is corrupt or not the official archive")

    try:
        return atomic_write(target, fetch)
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"cannot download {url}: {exc}") from None
