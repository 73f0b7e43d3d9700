"""Pretrained weights by name: the table (:mod:`.table`), where files live (:mod:`.cache`), careful downloads
(:mod:`.download`, :mod:`.retrieve`); the step from a name to a ready model is :func:`resnets.loading.build`,
above this package.

``resnets.create_model("resnet50", weights="resnet50.tv2_in1k")``, ``--weights NAME``, ``--init NAME`` and
``resnets weights get NAME`` all go through :func:`fetch`. See docs/weights.md.
"""

from __future__ import annotations

from .table import Entry, entries, find, lookup, registered

__all__ = ["Entry", "cached_entry", "entries", "fetch", "find", "lookup", "registered", "resolve_name"]


def fetch(entry: Entry, **kwargs: object):  # noqa: ANN201 - a Path; kept light: no import before it is needed
    """The checked local file of ``entry`` (see :func:`resnets.pretrained.retrieve.fetch`)."""
    from .retrieve import fetch as _fetch

    return _fetch(entry, **kwargs)  # type: ignore[arg-type]


def resolve_name(weights: object, arch: str | None = None) -> Entry | None:
    """The table entry ``weights`` names when it is a name and not an existing file or folder; else None."""
    import os

    if not isinstance(weights, str) or os.path.exists(os.path.expanduser(weights)):
        return None
    from .table import looks_like_name

    entry = find(weights, arch)
    if entry is None and looks_like_name(weights):
        return lookup(weights, arch)  # a name-shaped word that names nothing: say so, with the close names
    if entry is not None and arch is not None and entry.arch != arch:
        return lookup(entry.name, arch)  # refused: weights for another architecture
    return entry


def cached_entry(path: object) -> Entry | None:
    """The table entry whose cached file (torchvision's or Keras' cache) ``path`` is, or None: such a file, named
    by its path (an index's record, a user's copy-paste), loads as its entry says."""
    import os
    from pathlib import Path

    from .cache import cache_path

    if not isinstance(path, str | os.PathLike) or not os.path.isfile(path):
        return None
    real = Path(path).resolve()
    return next((e for e in reversed(entries()) if e.cache != "hf" and e.file_name == real.name
                 and cache_path(e).resolve() == real), None)
