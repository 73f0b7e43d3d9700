"""Large-image loading (ImageNet-style folders): decode per sample in DataLoader workers, ImageNet transforms.

Train: RandomResizedCrop(image_size), RandomHorizontalFlip, ToDtype(float32, scale), Normalize.
Eval: Resize(resize), CenterCrop(image_size), ToDtype, Normalize. Decoding goes through
:func:`resnets.data.decode.decode_files` (libjpeg-turbo for plain JPEGs, Pillow for everything else), so the
odd-image rules of :mod:`resnets.data.images` hold. Bad images raise :class:`BadImageError`, or with
``skip_bad_images`` are dropped from their batch and listed in the loader's ``bad_images``.

Training order and augmentation are a pure function of (seed, epoch, sample index), whatever the number of
workers and whether they persist: :class:`EpochSampler`, in the main process, draws the epoch's order from
(seed, epoch) and hands each index to the dataset with the seed of its augmentation, derived from (seed, epoch,
index); a resumed epoch starts at a sample position without loading the samples before it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..errors import UserError
from ..runtime import derive_seed
from .decode import decode_files
from .folder import find_classes, scan_split
from .images import BadImageError
from .normalization import IMAGENET_MEAN, IMAGENET_STD


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

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int] | BadImageError:
        """(image, label) of sample ``key``: an index, or (index, seed) to draw the transform's random choices
        from ``seed`` alone (the global generator is left as it was). A bad image raises
        :class:`BadImageError`, or with ``skip_bad_images`` is returned, for the collate function to leave out
        and list."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        image = decode_files([path], workers=1)[0]
        if isinstance(image, BadImageError):
            if not self.skip_bad_images:
                raise image
            return image
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:  # torchvision draws from the global CPU generator: seeded here, restored after
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(seed)
                    image = self.transform(image)
        return image, label


class EpochSampler(Sampler[tuple[int, int]]):
    """(index, augmentation seed) of every sample of ``dataset`` once per epoch, in an order drawn from
    (``seed``, epoch); each seed is derived from (``seed``, epoch, index). :meth:`set_position` picks the epoch
    and how many of its samples to skip (never loaded). Runs in the main process, so persistent workers follow."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)
        self.epoch = self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """The next iteration yields epoch ``epoch`` from its sample ``start`` on."""
        self.epoch, self.start = int(epoch), max(0, int(start))

    def __len__(self) -> int:
        return max(0, len(self.dataset) - self.start)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, seed = self.epoch, self.seed  # the position now, not when the first index is asked for
        order = torch.randperm(len(self.dataset),  # type: ignore[arg-type]
                               generator=torch.Generator().manual_seed(derive_seed("batches", seed, epoch)))
        return ((index, derive_seed("augment", seed, epoch, index)) for index in order[self.start:].tolist())


def collate_listing_bad(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """(images, labels) of the good samples, default-collated, and (path, reason) of each bad one."""
    bad = [(b.path, b.reason) for b in batch if isinstance(b, BadImageError)]
    kept = [b for b in batch if not isinstance(b, BadImageError)]
    if not kept:
        return torch.empty(0, 3, 0, 0), torch.empty(0, dtype=torch.int64), bad
    images, labels = default_collate(kept)
    return images, labels, bad


class StreamingLoader(DataLoader):
    """A DataLoader of (images, labels) batches that keeps the bad images its workers skipped
    (``skip_bad_images``) in ``bad_images``: (path, reason), each once, in the order found; :meth:`close`
    stops persistent workers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bad_images: list[tuple[str, str]] = []

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[override]
        seen = {path for path, _ in self.bad_images}
        for images, labels, bad in super().__iter__():
            for path, reason in bad:
                if path not in seen:
                    seen.add(path)
                    self.bad_images.append((path, reason))
            yield images, labels

    def close(self) -> None:
        """Stop the worker processes now. Persistent workers otherwise live as long as the loader, and with
        pinned memory the interpreter's exit can wait about 5 s per worker for them (pytorch/pytorch#81794)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()  # what the iterator's __del__ does, done now


def streaming_loader(split_dir: str | os.PathLike[str], classes: Sequence[str] | None, *, train: bool,
                     batch_size: int, workers: int, image_size: int = 224, resize: int = 256,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     skip_bad_images: bool = False, seed: int = 0,
                     pin_memory: bool = False, drop_last: bool | None = None, flip: bool = True,
                     indices: Sequence[int] | None = None) -> StreamingLoader:
    """A DataLoader of normalised float batches from an image folder; ``indices`` keeps only those of the
    split's sorted files. ``train``: shuffled and augmented by an :class:`EpochSampler` of ``seed`` (the
    loader's ``sampler``), workers kept between epochs; else in order, workers started for each pass. With
    ``skip_bad_images`` the bad images met are left out of their batch and listed in the loader's
    ``bad_images``."""
    dataset = ImageFolderDataset(split_dir, classes, skip_bad_images=skip_bad_images,
                                 transform=imagenet_transforms(train, image_size, resize, mean, std, flip))
    if indices is not None:
        dataset.samples = [dataset.samples[i] for i in indices]
    return StreamingLoader(dataset, batch_size=batch_size, sampler=EpochSampler(dataset, seed) if train else None,
                           num_workers=workers, collate_fn=collate_listing_bad, pin_memory=pin_memory,
                           generator=torch.Generator(),  # the workers' base seed: never the global generator
                           drop_last=train if drop_last is None else drop_last,
                           persistent_workers=train and workers > 0)
