"""Large-image loading (ImageNet-style folders): decode per sample in DataLoader workers, ImageNet transforms.

Train: RandomResizedCrop(image_size), RandomHorizontalFlip, ToDtype(float32, scale), Normalize.
Eval: Resize(resize), CenterCrop(image_size), ToDtype, Normalize. Decoding goes through
:func:`resnets.data.decode.decode_files` (libjpeg-turbo for plain JPEGs, Pillow for everything else), so the
odd-image rules of :mod:`resnets.data.images` hold. Bad images raise :class:`BadImageError`, or with
``skip_bad_images`` are dropped from their batch with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import UserError
from .decode import decode_files
from .folder import find_classes, scan_split
from .images import BadImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_transforms(train: bool, image_size: int = 224, resize: int = 256,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        flip: bool = True) -> Any:
    """The torchvision v2 transform pipeline for uint8 3xHxW tensors, train (``flip``: random flips) or eval."""
    from torchvision.transforms import v2

    if train:
        steps = [v2.RandomResizedCrop(image_size, antialias=True), *([v2.RandomHorizontalFlip()] if flip else [])]
    else:
        steps = [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


class ImageFolderDataset(Dataset):
    """Samples (image tensor, label) of an image-folder split over a given class index."""

    def __init__(self, split_dir: str | os.PathLike[str], classes: Sequence[str] | None = None, *,
                 transform: Any = None, skip_bad_images: bool = False) -> None:
        self.root = Path(split_dir)
        if classes is None:
            classes = find_classes(self.root)
        else:
            extra = [c for c in find_classes(self.root, allow_empty=True) if c not in classes]
            if extra:
                raise UserError(f"{self.root} has class folder(s) {', '.join(extra)} not in the training classes")
        self.classes = list(classes)
        self.samples = [(str(self.root / rel), label) for rel, _, _, label in scan_split(self.root, self.classes)]
        if not self.samples:
            raise UserError(f"no image files in {self.root}")
        self.transform = transform
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[index]
        image = decode_files([path], workers=1)[0]
        if isinstance(image, BadImageError):
            if not self.skip_bad_images:
                raise image
            warnings.warn(f"skipping {image}", stacklevel=2)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def collate_skipping_none(batch: list[Any]) -> Any:
    """default_collate of the samples that are not None (bad images skipped)."""
    kept = [b for b in batch if b is not None]
    if not kept:
        return torch.empty(0, 3, 0, 0), torch.empty(0, dtype=torch.int64)
    return default_collate(kept)


def streaming_loader(split_dir: str | os.PathLike[str], classes: Sequence[str] | None, *, train: bool,
                     batch_size: int, workers: int, image_size: int = 224, resize: int = 256,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     skip_bad_images: bool = False, generator: torch.Generator | None = None,
                     pin_memory: bool = False, drop_last: bool | None = None, flip: bool = True,
                     indices: Sequence[int] | None = None) -> DataLoader:
    """A DataLoader of normalised float batches from an image folder, shuffled and augmented if ``train``;
    ``indices`` keeps only those of the split's sorted files."""
    dataset = ImageFolderDataset(split_dir, classes, skip_bad_images=skip_bad_images,
                                 transform=imagenet_transforms(train, image_size, resize, mean, std, flip))
    if indices is not None:
        dataset.samples = [dataset.samples[i] for i in indices]
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=workers,
                      collate_fn=collate_skipping_none, pin_memory=pin_memory, generator=generator,
                      drop_last=train if drop_last is None else drop_last, persistent_workers=workers > 0)
