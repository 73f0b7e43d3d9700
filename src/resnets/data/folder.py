"""Image folders (``split/<class>/**/*.jpg``): the class index, and loading a split into memory once.

A split is decoded once into a uint8 tensor cache entry (see :mod:`resnets.data.cache`), keyed by the
sorted relative paths, sizes and modification times of its files, the ``size`` argument and the class list,
so any added, removed, touched or changed file is noticed and the split is decoded again.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from ..progress import Progress
from .cache import cache_key, load_entry, resolve_cache_dir, save_entry
from .decode import decode_files
from .images import BadImageError, is_image_file
from .tensors import ImageTensors, LoadReport

Size = int | tuple[int, int]

#: Seed of the permutation whose first N files ``load_image_folder(limit=N)`` decodes (eval's ``--max-images``).
SUBSET_SEED = 1234


def find_classes(split_dir: str | os.PathLike[str], *, allow_empty: bool = False) -> list[str]:
    """Sorted class folder names of ``split_dir``, ignoring hidden folders and files.

    A class folder without images is a :class:`UserError` naming it, unless ``allow_empty``.
    """
    root = Path(split_dir)
    if not root.is_dir():
        raise UserError(f"not a folder: {root}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"no class folders in {root} (expected {root}/<class>/<image files>)")
    if not allow_empty:
        for name in classes:
            if not _image_files(root / name):
                raise UserError(f"class folder {root / name} has no image files")
    return classes


def _image_files(class_dir: Path) -> list[os.DirEntry[str]]:
    """Image file entries under ``class_dir`` (recursive, hidden files and folders skipped)."""
    found: list[os.DirEntry[str]] = []
    stack = [class_dir]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.is_file() and is_image_file(entry.name):
                    found.append(entry)
    return found


def scan_split(split_dir: str | os.PathLike[str], classes: list[str]) -> list[tuple[str, int, int, int]]:
    """(relative path, byte size, mtime in ns, label) of every image of ``classes`` present, sorted by path."""
    root = Path(split_dir)
    rows: list[tuple[str, int, int, int]] = []
    for label, name in enumerate(classes):
        if not (root / name).is_dir():
            continue
        for entry in _image_files(root / name):
            st = entry.stat()
            rows.append((Path(entry.path).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns, label))
    rows.sort()
    return rows


def sample_image_sizes(split_dir: str | os.PathLike[str], count: int = 16) -> list[tuple[int, int]]:
    """(height, width) of up to ``count`` images of ``split_dir``, taken evenly over its sorted image files;
    files that cannot be read (corrupt, truncated, not images) are skipped and the next ones tried."""
    from PIL import Image

    root = Path(split_dir)
    files = sorted(Path(e.path) for d in find_classes(root, allow_empty=True) for e in _image_files(root / d))
    step = max(1, len(files) // count)
    order = files[::step] + [f for i, f in enumerate(files) if i % step]
    sizes: list[tuple[int, int]] = []
    for path in order:
        if len(sizes) == count:
            break
        try:
            with Image.open(path) as im:
                im.verify()
                width, height = im.size
        except Exception:  # noqa: BLE001 - any unreadable file is just not a sample
            continue
        sizes.append((height, width))
    return sizes


def _as_hw(size: Size) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) <= 0:
        raise UserError(f"size must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


def load_image_folder(split_dir: str | os.PathLike[str], classes: list[str] | None = None, *,
                      size: Size | None = None, skip_bad_images: bool = False,
                      cache_dir: str | os.PathLike[str] | None = None,
                      workers: int | None = None,
                      image_size: int | None = None, progress: bool = True,
                      limit: int | None = None) -> tuple[ImageTensors, LoadReport]:
    """Load an image-folder split into memory, decoding it once into the cache.

    ``classes=None`` takes the class list from this split. Otherwise ``classes`` is the training split's
    list and labels follow it: a class folder here that is not in it is a :class:`UserError`; a class
    missing here is allowed and listed in ``report.missing_classes``. Bad images raise
    :class:`BadImageError` unless ``skip_bad_images``, which leaves them out and lists them in
    ``report.bad_images``. Images of different sizes need ``size`` (int or (height, width)), with which every
    image is resized to it (antialiased bilinear), or ``image_size=N``, with which each is scaled so that its
    shorter side is N (aspect kept) and centre-cropped to N x N; but images all of one square size below N are
    kept as they are, for the batches to upscale on the device (``DeviceBatches(out_size=N)``). Decoding shows its progress on stderr
    (see :mod:`resnets.progress`) unless ``progress=False``.

    ``limit=N`` decodes (and caches) only N of the files, the first of a permutation seeded with
    :data:`SUBSET_SEED`, in path order (fewer if some are bad and skipped); ``report.missing_classes`` then
    names the classes with no files at all, not those the subset happens to miss.
    """
    start = time.perf_counter()
    root = Path(split_dir)
    if classes is None:
        classes = find_classes(root)
    else:
        classes = list(classes)
        present = find_classes(root, allow_empty=True)
        extra = [c for c in present if c not in classes]
        if extra:
            raise UserError(f"{root} has class folder(s) {', '.join(extra)} not in the training classes "
                            f"({', '.join(classes)}); labels would not match")
    if size is not None and image_size is not None:
        raise UserError("pass size or image_size, not both")
    if image_size is not None and image_size <= 0:
        raise UserError(f"--image-size must be a positive number of pixels, got {image_size}")
    hw = _as_hw(size) if size is not None else None
    rows = scan_split(root, classes)
    present = {r[3] for r in rows}
    if limit is not None and limit < len(rows):
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(SUBSET_SEED))[:limit]
        rows = [rows[i] for i in sorted(keep.tolist())]  # the cache key below holds just these files
    report = LoadReport(source=str(root), classes=list(classes))
    if not rows:
        raise UserError(f"no image files in {root}")

    parts = {"kind": "image-folder", "files": [r[:3] for r in rows], "size": hw, "classes": classes}
    if image_size is not None:
        parts["fit"] = {"side": image_size, "small_squares_kept": True}
    key = cache_key(parts)
    cache_path = resolve_cache_dir(cache_dir) / "folders" / f"{key}.safetensors"
    report.cache_path = str(cache_path)
    entry = load_entry(cache_path)
    if entry is not None:
        tensors, meta = entry
        report.bad_images = [tuple(b) for b in meta["bad_images"]]
        if report.bad_images and not skip_bad_images:
            path, reason = report.bad_images[0]
            raise BadImageError(path, reason)
        data = ImageTensors(tensors["images"], tensors["labels"], list(classes))
        report.cache_hit, report.resized = True, int(meta["resized"])
        return data, _finish(report, data, start, present if limit is not None else None)

    with Progress(len(rows), f"decoding {root.name}", enabled=progress) as bar:
        results = decode_files([root / r[0] for r in rows], workers=workers, progress=bar.to)
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for row, result in zip(rows, results, strict=True):
        if isinstance(result, BadImageError):
            if not skip_bad_images:
                raise result
            report.bad_images.append((result.path, result.reason))
            continue
        images.append(result)
        labels.append(row[3])
    if not images:
        raise UserError(f"no readable images in {root} ({len(report.bad_images)} bad)")
    if image_size is not None and not _one_small_square(images, image_size):
        images, report.resized = _fit_square(images, image_size)
    elif image_size is not None:
        report.resized = 0
    else:
        images, report.resized = _same_size(images, hw, root)
    data = ImageTensors(torch.stack(images), torch.tensor(labels, dtype=torch.int64), list(classes))
    try:
        save_entry(cache_path, {"images": data.images, "labels": data.labels},
                   {"source": str(root), "bad_images": report.bad_images, "resized": report.resized})
    except OSError as exc:
        warnings.warn(f"could not write data cache {cache_path}: {exc}", stacklevel=2)
    return data, _finish(report, data, start, present if limit is not None else None)


def _same_size(images: list[torch.Tensor], hw: tuple[int, int] | None,
               root: Path) -> tuple[list[torch.Tensor], int]:
    """Images all of one size (resized to ``hw`` if given), and how many were resized."""
    if hw is None:
        first = tuple(images[0].shape[1:])
        for img in images:
            if tuple(img.shape[1:]) != first:
                raise UserError(f"images in {root} have different sizes ({first[0]}x{first[1]} and "
                                f"{img.shape[1]}x{img.shape[2]}); pass --image-size N (Python: image_size=N) "
                                "to scale each to shorter side N and centre-crop N x N, or pass a size to "
                                "resize them all")
        return images, 0
    from torchvision.transforms.v2 import functional as TF

    out, resized = [], 0
    for img in images:
        if tuple(img.shape[1:]) != hw:
            img = TF.resize(img, list(hw), antialias=True)
            resized += 1
        out.append(img)
    return out, resized


def _one_small_square(images: list[torch.Tensor], side: int) -> bool:
    """Whether every image is one square size below ``side`` (upscaled later, on the device, not here)."""
    first = tuple(images[0].shape[1:])
    return first[0] == first[1] < side and all(tuple(img.shape[1:]) == first for img in images)


def _fit_square(images: list[torch.Tensor], side: int) -> tuple[list[torch.Tensor], int]:
    """Each image scaled so that its shorter side is ``side`` (antialiased), then centre-cropped to side x side;
    and how many were changed."""
    from torchvision.transforms.v2 import functional as TF

    out, changed = [], 0
    for img in images:
        if tuple(img.shape[1:]) != (side, side):
            if min(img.shape[1:]) != side:
                img = TF.resize(img, side, antialias=True)
            img = TF.center_crop(img, [side, side])
            changed += 1
        out.append(img)
    return out, changed


def _finish(report: LoadReport, data: ImageTensors, start: float, present: set[int] | None = None) -> LoadReport:
    """``report`` completed from ``data``; ``present``: the labels with files, when ``data`` is a subset."""
    counts = data.class_counts()
    report.num_images = len(data)
    report.class_counts = counts
    report.missing_classes = [c for i, (c, n) in enumerate(counts.items())
                              if (n == 0 if present is None else i not in present)]
    report.seconds = time.perf_counter() - start
    return report
