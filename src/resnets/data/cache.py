"""The on-disk cache of decoded data sets: where it lives, how entries are keyed, atomic writes, safe reads.

Entries are safetensors files (plain tensors and string metadata; loading runs no code), named by a SHA-256
of everything that determines their content. The cache lives in the user's cache directory, never beside
the data: ``cache_dir`` argument, else ``$RESNETS_CACHE_DIR``, else ``$XDG_CACHE_HOME/resnets``, else
``~/.cache/resnets``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..outputs import atomic_write

#: Bumped whenever decoding or the entry layout changes, so old entries are not reused.
CACHE_VERSION = "resnets-data-1"


def default_cache_dir() -> Path:
    """The user cache directory for resnets (not created)."""
    if os.environ.get("RESNETS_CACHE_DIR"):
        return Path(os.environ["RESNETS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnets"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cache_dir`` or the default, created if missing; UserError if it cannot be created."""
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create cache directory {path}: {exc.strerror or exc}") from None
    return path


def cache_key(parts: Any) -> str:
    """Hex SHA-256 of ``parts`` (JSON-serialisable) together with :data:`CACHE_VERSION`."""
    blob = json.dumps([CACHE_VERSION, parts], sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def md5_file(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file's bytes."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write tensors and JSON metadata to ``path`` atomically (see :func:`resnets.outputs.atomic_write`)."""
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                                             metadata={"json": json.dumps(metadata)}))


def load_entry(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Tensors and metadata of a cache entry, or None if it is missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {})["json"])
    except (OSError, SafetensorError, KeyError, ValueError):
        return None
    return tensors, metadata
