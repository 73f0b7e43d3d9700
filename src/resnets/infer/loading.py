"""Image paths and batches for inference; the model itself comes from :mod:`resnets.loading` (weights file, run
folder or weights name -> :class:`LoadedModel`), whose names are kept here for the callers that import them from
this module."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from ..data.normalization import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from ..loading import (
    FAMILY_SIZES,
    MAX_INPUT_SIDE,
    LoadedModel,
    load_for_inference,
    preprocess,
    recorded_sizes,
    resolve_weights_path,
    trained_sizes,
)
from ..pretrained.classes import imagenet_classes

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "FAMILY_SIZES", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_INPUT_SIDE",
           "LoadedModel", "expand_paths", "imagenet_classes", "load_for_inference", "preprocess", "read_batches",
           "read_batches_reporting", "recorded_sizes", "report_failure", "require", "resolve_weights_path",
           "trained_sizes"]


def expand_paths(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files named by ``inputs`` (files, folders searched recursively, globs), in order, each once.

    Returns ``(paths, problems)``; a problem is ``(input, message)`` for an input that names nothing.
    """
    from ..data.images import is_image_file

    paths: list[str] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            paths.append(p)

    for item in inputs:
        text = os.fspath(item)
        if os.path.isdir(text):
            found = sorted(str(p) for p in _walk_images(Path(text), is_image_file))
            if not found:
                problems.append((text, "folder holds no image files"))
            for p in found:
                add(p)
        elif os.path.exists(text):
            add(text)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            files = [m for m in matches if os.path.isfile(m)]
            for d in (m for m in matches if os.path.isdir(m)):
                files += sorted(str(p) for p in _walk_images(Path(d), is_image_file))
            if not files:
                problems.append((text, "pattern matches no files"))
            for p in files:
                add(p)
        else:
            problems.append((text, "no such file or folder"))
    return paths, problems


def _walk_images(root: Path, is_image_file: object) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_file(name):  # type: ignore[operator]
                yield Path(dirpath) / name


def read_batches(paths: Sequence[str], loaded: LoadedModel, batch_size: int
                 ) -> Iterator[tuple[list[str], torch.Tensor | None, list[tuple[str, str]]]]:
    """Read and preprocess ``paths`` in batches: yields ``(good_paths, inputs, failures)`` per batch;
    an unreadable file becomes a ``(path, message)`` failure and the rest of its batch goes on."""
    from ..data import BadImageError, read_rgb

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    for start in range(0, len(paths), batch_size):
        good: list[str] = []
        tensors: list[torch.Tensor] = []
        failures: list[tuple[str, str]] = []
        for p in paths[start:start + batch_size]:
            try:
                tensors.append(loaded.preprocess(read_rgb(p)))
                good.append(p)
            except BadImageError as exc:
                failures.append((p, str(exc)))
            except (OSError, UserError) as exc:
                failures.append((p, f"{p}: {exc}"))
        yield good, (torch.stack(tensors) if tensors else None), failures


def require(module: str, extra: str) -> None:
    """UserError naming the extra to install when optional ``module`` is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"this needs {module}: pip install 'resnets[{extra}]'")


def report_failure(failures: list[tuple[str, str]], item: tuple[str, str], on_failure: object) -> None:
    """Record an unreadable input ``(path, message)`` and pass it to ``on_failure`` if that is callable."""
    failures.append(item)
    if callable(on_failure):
        on_failure(*item)


def read_batches_reporting(paths: Sequence[str], loaded: LoadedModel, batch_size: int,
                           failures: list[tuple[str, str]], on_failure: object, *, what: str,
                           progress: bool) -> Iterator[tuple[list[str], torch.Tensor]]:
    """``read_batches`` under a progress bar (``what``): unreadable files go to ``report_failure`` beside the
    bar; yields ``(good_paths, inputs)`` for each batch with a readable image."""
    from ..progress import Progress

    with Progress(len(paths), what, enabled=progress) as bar:
        for good, inputs, bad in read_batches(paths, loaded, batch_size):
            if bad:
                with bar.aside():
                    for item in bad:
                        report_failure(failures, item, on_failure)
            if inputs is not None:
                yield good, inputs
            bar.update(len(good) + len(bad))
