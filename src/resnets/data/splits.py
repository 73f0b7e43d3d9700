"""``open_data``: one call from a data spec (folder, CIFAR name or archive, "sample") to train/test splits, and
the seeded subsets that ``--train-images``, ``--test-images`` and ``--max-images`` keep."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .cifar import DATASETS, find_cifar, load_cifar
from .folder import Size, load_image_folder
from .sample import extract_sample
from .tensors import ImageTensors, LoadReport

#: Seed of the fixed permutation that ``val_split`` holds out from the training split.
VAL_SPLIT_SEED = 0
#: Seed of the fixed permutation whose first N items a limit on the number of images keeps.
SUBSET_SEED = 1234


@dataclass
class DataSplits:
    """Train and test (or validation) splits sharing one class list, with how each was loaded."""

    train: ImageTensors
    test: ImageTensors
    classes: list[str]
    name: str
    report: dict[str, LoadReport] = field(default_factory=dict)


def _cifar_report(source: str, data: ImageTensors, start: float) -> LoadReport:
    counts = data.class_counts()
    return LoadReport(source=source, num_images=len(data), classes=list(data.classes), class_counts=counts,
                      missing_classes=[c for c, n in counts.items() if n == 0],
                      seconds=time.perf_counter() - start)


def _cifar_name(path: Path) -> str | None:
    for name, spec in DATASETS.items():
        if path.name in (spec["archive"], spec["folder"]) or find_cifar(path, name) not in (None, path):
            return name
    if path.is_dir():
        for name, spec in DATASETS.items():
            if (path / spec["meta"]).is_file():
                return name
    return None


def open_data(spec: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None,
              skip_bad_images: bool = False, download: bool = False, val_split: int = 0,
              size: Size | None = None, image_size: int | None = None, progress: bool = True) -> DataSplits:
    """Open a data set by spec and return its train and test splits.

    ``spec`` is ``"sample"`` (the shipped CIFAR-10 sample), ``"cifar10"``/``"cifar100"`` (from
    ``<cache dir>/cifar``, downloaded there if ``download``), the path of a CIFAR archive or extracted folder,
    or a folder with ``train/`` and ``val/`` (or ``test/``) image folders. ``val_split=n`` replaces the test
    split by the last ``n`` images of a fixed seeded permutation of the training split (the paper's 45k/5k).
    ``size``/``image_size`` apply to image folders (see :func:`load_image_folder`); ``progress=False`` hides
    the progress of decoding them.
    """
    text = os.fspath(spec)
    start = time.perf_counter()
    if text == "sample":
        splits = _open_folder(extract_sample(cache_dir), "cifar10-sample", cache_dir, skip_bad_images, size,
                              image_size, progress=progress)
    elif text in DATASETS:
        train = load_cifar(None, text, True, download=download, cache_dir=cache_dir)
        report = {"train": _cifar_report(text, train, start)}
        test = load_cifar(None, text, False, cache_dir=cache_dir)
        report["test"] = _cifar_report(text, test, start)
        splits = DataSplits(train, test, list(train.classes), text, report)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise UserError(f"data not found: {text} (expected a folder with train/ and val/ or test/, a CIFAR "
                            "archive or folder, 'cifar10', 'cifar100' or 'sample')")
        name = _cifar_name(path)
        if name is not None:
            train = load_cifar(path, name, True)
            test = load_cifar(path, name, False)
            splits = DataSplits(train, test, list(train.classes), name,
                                {"train": _cifar_report(text, train, start), "test": _cifar_report(text, test, start)})
        else:
            splits = _open_folder(path, path.name, cache_dir, skip_bad_images, size, image_size, bool(val_split),
                                  progress=progress)
    return hold_out(splits, val_split) if val_split else splits


def _open_folder(root: Path, name: str, cache_dir: str | os.PathLike[str] | None, skip_bad_images: bool,
                 size: Size | None, image_size: int | None = None, val_split: bool = False, *,
                 progress: bool = True) -> DataSplits:
    """``root``'s train/ and val/ (or test/) splits; with ``val_split`` (held out later) val/ may be absent."""
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder (expected train/<class>/... and val/ or test/)")
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if test_dir is None and not val_split:
        raise UserError(f"{root} has no val/ or test/ folder next to train/; add one, or hold out training "
                        "images with --val-split N")
    train, train_report = load_image_folder(root / "train", size=size, skip_bad_images=skip_bad_images,
                                            cache_dir=cache_dir, image_size=image_size, progress=progress)
    if test_dir is None:  # hold_out replaces the test split
        return DataSplits(train, train, list(train.classes), name, {"train": train_report})
    test_size = None if image_size else size or train.image_size
    test, test_report = load_image_folder(test_dir, train.classes, size=test_size, skip_bad_images=skip_bad_images,
                                          cache_dir=cache_dir, image_size=image_size, progress=progress)
    return DataSplits(train, test, list(train.classes), name, {"train": train_report, test_dir.name: test_report})


def hold_out(splits: DataSplits, count: int) -> DataSplits:
    """Train on all but the last ``count`` images of a fixed seeded permutation; test on those ``count``."""
    n = len(splits.train)
    if not 0 < count < n:
        raise UserError(f"val_split must be between 1 and {n - 1} (the training split has {n} images), got {count}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    train, val = splits.train.subset(order[: n - count]), splits.train.subset(order[n - count:])
    report = dict(splits.report)
    report["val"] = LoadReport(source=f"last {count} of a seeded permutation of the training split",
                               num_images=count, classes=list(splits.classes), class_counts=val.class_counts())
    return DataSplits(train, val, splits.classes, f"{splits.name} ({n - count}/{count} val split)", report)


def subset_indices(n: int, count: int | None) -> list[int]:
    """The indices of ``count`` of ``n`` items: the first ``count`` of a fixed seeded permutation; all ``n``, in
    order, if ``count`` is None or at least ``n``."""
    if count is None or count >= n:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(SUBSET_SEED))[:count].tolist()


def limit_images(data: ImageTensors, count: int | None) -> ImageTensors:
    """``count`` images of ``data`` (see :func:`subset_indices`); ``data`` itself if None or at least all."""
    if count is None or count >= len(data):
        return data
    return data.subset(subset_indices(len(data), count))


def eval_split_dir(root: str | os.PathLike[str]) -> Path:
    """The folder of class folders to evaluate on: ``root/val``, ``root/test``, or ``root`` itself when it holds
    class folders and no ``train/`` (a test set alone, or a ``test/``/``val/`` folder given directly)."""
    path = Path(root).expanduser()
    for name in ("val", "test"):
        if (path / name).is_dir():
            return path / name
    if (path / "train").is_dir():
        raise UserError(f"{path} has train/ but no val/ or test/ folder to evaluate on; give the folder of the "
                        "images to score (class sub-folders)")
    return path


def open_eval_split(spec: str | os.PathLike[str], classes: list[str] | None = None, *,
                    cache_dir: str | os.PathLike[str] | None = None, skip_bad_images: bool = False,
                    image_size: int | None = None, progress: bool = True,
                    max_images: int | None = None) -> tuple[ImageTensors, LoadReport]:
    """The test (or val) split of ``spec`` alone, in memory; the training split is never read.

    ``spec`` is as for :func:`open_data`, or a folder of class folders (see :func:`eval_split_dir`).
    ``classes`` (the model's) fixes the labels; None takes them from ``train/`` beside the split if there is
    one (folder names only), else from the split itself. ``progress=False`` hides the progress of decoding.
    ``max_images=N``: of an image folder, only N files are decoded (see ``load_image_folder``'s ``limit``);
    a CIFAR split is read whole (it needs no decoding) and left for the caller to subset.
    """
    text = os.fspath(spec)
    start = time.perf_counter()
    if text in DATASETS:
        test = load_cifar(None, text, False, cache_dir=cache_dir)
        return test, _cifar_report(text, test, start)
    root = extract_sample(cache_dir) if text == "sample" else Path(text).expanduser()
    if not root.exists():
        raise UserError(f"data not found: {text} (expected a folder of class folders, one with val/ or test/, "
                        "a CIFAR archive or folder, 'cifar10', 'cifar100' or 'sample')")
    name = None if text == "sample" else _cifar_name(root)
    if name is not None:
        test = load_cifar(root, name, False)
        return test, _cifar_report(text, test, start)
    split = eval_split_dir(root)
    if classes is None and split != root and (root / "train").is_dir():
        from .folder import find_classes

        classes = find_classes(root / "train", allow_empty=True)
    return load_image_folder(split, classes, skip_bad_images=skip_bad_images, cache_dir=cache_dir,
                             image_size=image_size, progress=progress, limit=max_images)
