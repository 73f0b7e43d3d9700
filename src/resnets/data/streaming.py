"""Large-image loading (ImageNet-style folders): decode and crop per sample in DataLoader workers, uint8 out.

Train: a random-resized crop of ``image_size`` and a horizontal flip (:func:`resnets.data.crops.train_crop`:
plain JPEGs decoded at a reduced DCT scale where the crop allows). Eval: shorter side to ``resize``, centre
crop of ``image_size``. Workers return **uint8** crops; the batches are normalised on the device
(:class:`resnets.data.feed.DeviceFeed`). Decoding goes through :func:`resnets.data.decode.decode_bytes`
(libjpeg-turbo for plain JPEGs, Pillow for everything else), so the odd-image rules of
:mod:`resnets.data.images` hold. Bad images raise :class:`BadImageError`, or with ``skip_bad_images`` are
dropped from their batch and listed in the loader's ``bad_images``.

Training order and augmentation are a pure function of (seed, epoch, sample index), whatever the number of
workers and whether they persist: :class:`EpochSampler`, in the main process, draws the epoch's order from
(seed, epoch) and hands each index to the dataset with the seed of its augmentation, derived from (seed, epoch,
index), and the epoch's crop size when progressive resizing sets one; a resumed epoch starts at a sample
position without loading the samples before it.
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
from .crops import eval_crop, train_crop
from .decode import decode_bytes
from .folder import find_classes, scan_split
from .images import BadImageError
from .normalization import IMAGENET_MEAN, IMAGENET_STD


def imagenet_transforms(train: bool, image_size: int = 224, resize: int = 256,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        flip: bool = True, normalize: bool = True) -> Any:
    """The torchvision v2 transform pipeline for uint8 3xHxW tensors, train (``flip``: random flips) or eval;
    ``normalize=False`` keeps the uint8 crop (for the device to normalise)."""
    from torchvision.transforms import v2

    if train:
        steps = [v2.RandomResizedCrop(image_size, antialias=True), *([v2.RandomHorizontalFlip()] if flip else [])]
    else:
        steps = [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    if not normalize:
        return v2.Compose(steps)
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def read_bytes(path: str) -> bytes:
    """The bytes of the file ``path``; :class:`BadImageError` naming it if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise BadImageError(path, exc.strerror or str(exc)) from None


class ImageFolderDataset(Dataset):
    """Samples (uint8 image, label) of an image-folder split over a given class index.

    ``train=True``: random-resized crops of ``image_size`` (flipped if ``flip``; ``reduced_decode``: JPEGs
    decoded at a reduced DCT scale where the crop allows); ``train=False``: shorter side ``resize``, centre crop
    ``image_size``; ``train=None``: the whole image through ``transform`` (if given)."""

    def __init__(self, split_dir: str | os.PathLike[str], classes: Sequence[str] | None = None, *,
                 transform: Any = None, skip_bad_images: bool = False, train: bool | None = None,
                 image_size: int = 224, resize: int = 256, flip: bool = True, reduced_decode: bool = True) -> None:
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
        self.train, self.image_size, self.resize = train, image_size, resize
        self.flip, self.reduced_decode = flip, reduced_decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int] | tuple[int, int, int]
                    ) -> tuple[torch.Tensor, int] | BadImageError:
        """(image, label) of sample ``key``: an index, or (index, seed[, size]) to draw the crop and flip from
        ``seed`` alone (the global generator is left as it was), at side ``size`` (default ``image_size``). A
        bad image raises :class:`BadImageError`, or with ``skip_bad_images`` is returned, for the collate
        function to leave out and list."""
        index, seed, size = (key, None, None) if isinstance(key, int) else (*key, None)[:3]
        path, label = self.samples[index]
        try:
            image = self._load(path, seed, size or self.image_size)
        except BadImageError as exc:
            if not self.skip_bad_images:
                raise
            return exc
        return image, label

    def _load(self, path: str, seed: int | None, size: int) -> torch.Tensor:
        data = read_bytes(path)
        if self.train:
            if seed is None:
                seed = int(torch.randint(0, 1 << 62, ()))
            return train_crop(data, path, seed, size, flip=self.flip, reduced=self.reduced_decode)
        if self.train is False:
            return eval_crop(data, path, size, self.resize)
        image = decode_bytes(data, path)
        if self.transform is None:
            return image
        if seed is None:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global CPU generator
            torch.default_generator.manual_seed(seed)
            return self.transform(image)


class EpochSampler(Sampler[tuple[int, ...]]):
    """(index, augmentation seed) of every sample of ``dataset`` once per epoch, in an order drawn from
    (``seed``, epoch); each seed is derived from (``seed``, epoch, index); with ``size`` set (progressive
    resizing), (index, seed, size). :meth:`set_position` picks the epoch and how many of its samples to skip
    (never loaded). Runs in the main process, so persistent workers follow."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)
        self.epoch = self.start = 0
        self.size: int | None = None  # the crop side this epoch (None: the dataset's own)

    def set_position(self, epoch: int, start: int = 0) -> None:
        """The next iteration yields epoch ``epoch`` from its sample ``start`` on."""
        self.epoch, self.start = int(epoch), max(0, int(start))

    def __len__(self) -> int:
        return max(0, len(self.dataset) - self.start)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        epoch, seed, size = self.epoch, self.seed, self.size  # the position now, not when the first is asked for
        order = torch.randperm(len(self.dataset),  # type: ignore[arg-type]
                               generator=torch.Generator().manual_seed(derive_seed("batches", seed, epoch)))
        if size is None:
            return ((index, derive_seed("augment", seed, epoch, index)) for index in order[self.start:].tolist())
        return ((index, derive_seed("augment", seed, epoch, index), size) for index in order[self.start:].tolist())


def collate_listing_bad(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """(images, labels) of the good samples, default-collated, and (path, reason) of each bad one."""
    bad = [(b.path, b.reason) for b in batch if isinstance(b, BadImageError)]
    kept = [b for b in batch if not isinstance(b, BadImageError)]
    if not kept:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad
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
                     skip_bad_images: bool = False, seed: int = 0,
                     pin_memory: bool = False, drop_last: bool | None = None, flip: bool = True,
                     indices: Sequence[int] | None = None, reduced_decode: bool = True) -> StreamingLoader:
    """A DataLoader of uint8 batches (crops of side ``image_size``) from an image folder, for a
    :class:`~resnets.data.feed.DeviceFeed` to normalise; ``indices`` keeps only those of the split's sorted
    files. ``train``: random-resized crops, shuffled and augmented by an :class:`EpochSampler` of ``seed`` (the
    loader's ``sampler``), workers kept between epochs; else shorter side ``resize`` and the centre crop, in
    order, workers started for each pass. With ``skip_bad_images`` the bad images met are left out of their
    batch and listed in the loader's ``bad_images``."""
    dataset = ImageFolderDataset(split_dir, classes, skip_bad_images=skip_bad_images, train=train,
                                 image_size=image_size, resize=resize, flip=flip, reduced_decode=reduced_decode)
    if indices is not None:
        dataset.samples = [dataset.samples[i] for i in indices]
    return StreamingLoader(dataset, batch_size=batch_size, sampler=EpochSampler(dataset, seed) if train else None,
                           num_workers=workers, collate_fn=collate_listing_bad, pin_memory=pin_memory,
                           generator=torch.Generator(),  # the workers' base seed: never the global generator
                           drop_last=train if drop_last is None else drop_last,
                           persistent_workers=train and workers > 0)
