"""Where pretrained weights live on disk, and the check that a file there is the one the table names.

torchvision's cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``; its file names), so a file
``torch.hub`` fetched is used as it is and nothing is fetched twice; Keras' (``$KERAS_HOME/models``, default
``~/.keras``) for keras.applications files. Hub entries are in the Hugging Face cache (see ``fetch``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .table import Entry

_verified: dict[tuple[str, int, int, str], bool] = {}  # (path, size, mtime_ns, checksum) -> matches


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub`` (``$XDG_CACHE_HOME/torch``, else
    ``~/.cache/torch``)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def keras_dir() -> Path:
    """Keras' cache folder for downloaded model files: ``$KERAS_HOME/models`` (default ``~/.keras/models``)."""
    return Path(os.path.expanduser(os.environ.get("KERAS_HOME") or "~/.keras")) / "models"


def cache_path(entry: Entry) -> Path:
    """Where ``entry``'s file is kept (for a Hub entry: the folder of its repository in the Hugging Face cache)."""
    if entry.cache == "keras":
        return keras_dir() / entry.file_name
    if entry.cache == "hf":
        from huggingface_hub.constants import HF_HUB_CACHE

        return Path(HF_HUB_CACHE) / ("models--" + entry.hf_repo.replace("/", "--"))
    return torch_hub_dir() / "checkpoints" / entry.file_name


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of ``path``'s bytes, read in 1 MiB pieces."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def matches(path: Path, checksum: str) -> bool:
    """Whether ``path``'s digest starts with ``checksum``'s (``"sha256:HEX"``, ``"md5:HEX"``); remembered for the
    file's size and modification time, so one process hashes a large file once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, checksum)
    if key not in _verified:
        algorithm, digest = checksum.split(":", 1)
        _verified[key] = file_digest(path, algorithm).startswith(digest)
    return _verified[key]


def is_cached(entry: Entry) -> bool:
    """Whether ``entry``'s file is in its cache (not checked: ``fetch`` checks it before any use)."""
    if entry.cache == "hf":
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        found = try_to_load_from_cache(entry.hf_repo, entry.hf_file)
        return isinstance(found, str)
    return cache_path(entry).is_file()
