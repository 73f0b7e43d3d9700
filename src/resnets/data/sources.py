"""Data opened in one place: ``open_train`` for a run, ``open_eval`` for ``resnets eval``, from any source.

A source is a data spec (``--data``) of one of three kinds, read the same way by training and evaluation:

* small images held in memory (CIFAR, the shipped sample, folders of small images): :class:`DeviceBatches`;
* a folder of large images (ImageNet-style, :func:`is_streaming_folder`), streamed: :class:`StreamedBatches`;
* WebDataset shards (:mod:`resnets.data.shards`), streamed: :class:`ShardBatches`.

Training batches of every kind are :class:`TrainBatches`: batches per epoch, an epoch's order chosen by
``set_epoch``, replayable from any batch (``iter_from``), and progressive resizing where ``resizable``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import UserError
from .contract import EvalData, TrainBatches, TrainData

__all__ = ["EvalData", "StreamedBatches", "TrainBatches", "TrainData", "TrainDataSpec", "is_streaming_folder",
           "open_eval", "open_train"]

if TYPE_CHECKING:
    from .feed import DeviceFeed
    from .streaming import StreamingLoader

#: Images whose longer side exceeds this many pixels are streamed from disk rather than held in memory.
STREAM_ABOVE = 64


@dataclass
class TrainDataSpec:
    """The settings that open training data, named and defaulting as in ``resnets.train.TrainConfig`` (but
    ``workers``: 0 here, loading in this process)."""

    data: str = "sample"
    cache_dir: str | None = None
    skip_bad_images: bool = False
    download: bool = False
    val_split: int = 0
    fit_images: int | None = None
    train_images: int | None = None
    test_images: int | None = None
    batch_size: int = 128
    pad: int = 4
    flip: bool = True
    flip_mode: str = "random"  # or "alternate" (resnets.data.augment)
    cutout: int = 0
    channels_last: bool = True
    seed: int = 0
    workers: int = 0
    image_size: int = 224
    resize: int = 256
    progress: bool = True
    max_member_mb: int = 64  # shards: see resnets.data.shards.ShardLimits
    shuffle_buffer_mb: int = 256
    max_shard_gb: int = 4

    @classmethod
    def of(cls, config: Any) -> TrainDataSpec:
        """The spec of ``config`` (a ``TrainConfig`` or any object with these attributes)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


class StreamedBatches(TrainBatches):
    """A streaming training DataLoader made resumable: its :class:`~resnets.data.streaming.EpochSampler` makes
    the order a function of (seed, epoch) and each sample's augmentation one of (seed, epoch, index), whatever
    the workers; ``iter_from`` starts the sampler at the batch's first sample, loading nothing before it. The
    loader's uint8 batches go to the device through ``feed`` (:class:`~resnets.data.feed.DeviceFeed`).
    Progressive resizing: :meth:`set_image_size` sets the side the workers crop to from the next epoch on."""

    resizable = True

    def __init__(self, loader: StreamingLoader, full_size: int, feed: DeviceFeed) -> None:
        self.loader, self.full_size, self.feed, self.epoch = loader, full_size, feed, 0

    def __len__(self) -> int:
        n, size = len(self.loader.dataset), self.loader.batch_size  # type: ignore[arg-type]
        assert size is not None
        return n // size if self.loader.drop_last else -(-n // size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_image_size(self, size: int | None) -> None:
        if size is not None and size < 1:
            raise UserError(f"image size must be positive, got {size}")
        self.loader.sampler.size = None if size in (None, self.full_size) else int(size)  # type: ignore

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.loader.sampler.set_position(self.epoch, max(0, start) * self.loader.batch_size)  # type: ignore
        yield from self.feed(self.loader)

    def close(self) -> None:
        self.loader.close()


def is_streaming_folder(spec: str | Path, *, sample: int = 16) -> bool:
    """True for an image folder whose images are large (ImageNet-like): those are streamed, not held in memory.

    Decided from up to ``sample`` readable images of its ``train/`` split (else ``val/``, ``test/``, else the
    folder itself when it holds class folders): streamed when most are over :data:`STREAM_ABOVE` pixels on
    their longer side. Unreadable files are skipped, never fatal.
    """
    from .folder import sample_image_sizes

    root = Path(spec)
    if not root.is_dir():
        return False
    split = next((root / s for s in ("train", "val", "test") if (root / s).is_dir()), root)
    try:
        sides = sorted(max(hw) for hw in sample_image_sizes(split, sample))
    except UserError:  # no class folders: not an image folder
        return False
    return bool(sides) and sides[len(sides) // 2] > STREAM_ABOVE


# ---- training -------------------------------------------------------------------------------------------


def open_train(spec: TrainDataSpec, device: torch.device, *, rank: int = 0, world_size: int = 1,
               is_main: bool = True, normalization: tuple[Sequence[float], Sequence[float]] | None = None
               ) -> TrainData:
    """Open ``spec.data`` for training on ``device``: small images in memory, large-image folders and shards
    streamed. With several processes (``world_size`` > 1) this one (``rank``) gets its slice of every batch
    and of the held-out set; ``is_main``: the process that shows progress. ``normalization`` (mean, std):
    normalise with these (trained weights' own) instead of the data's statistics or ImageNet's."""
    from .shards import is_shard_spec

    norm = normalization

    if spec.download and spec.data not in ("cifar10", "cifar100"):
        raise UserError(f"--download fetches cifar10 or cifar100; {spec.data} is not one of them: drop --download")
    if is_shard_spec(spec.data):
        return _open_shards(spec, device, rank, world_size, norm)
    if is_streaming_folder(spec.data):
        if world_size > 1:
            raise UserError(f"{spec.data}: several processes stream large images from WebDataset shards; write "
                            f"them with: resnets shard {spec.data} --out SHARDS, then train with --data SHARDS")
        return _open_streamed_folder(spec, device, norm)
    return _open_in_memory(spec, device, rank, world_size, is_main, norm)


def _held_out(spec: TrainDataSpec) -> str:
    return "validation" if spec.val_split else "test"


def _open_in_memory(spec: TrainDataSpec, device: torch.device, rank: int, world_size: int,
                    is_main: bool, norm: tuple[Sequence[float], Sequence[float]] | None) -> TrainData:
    """Small images held on ``device``: ``DeviceBatches`` (this rank's ``RankBatches`` of them)."""
    from .batches import DeviceBatches, RankBatches
    from .splits import limit_images, open_data

    splits = open_data(spec.data, cache_dir=spec.cache_dir, skip_bad_images=spec.skip_bad_images,
                       download=spec.download, val_split=spec.val_split, image_size=spec.fit_images,
                       progress=spec.progress and is_main)
    train_set, test_set = limit_images(splits.train, spec.train_images), limit_images(splits.test, spec.test_images)
    mean, std = (list(norm[0]), list(norm[1])) if norm else (list(train_set.mean()), list(train_set.std()))
    generator = torch.Generator().manual_seed(spec.seed)
    batches = DeviceBatches(train_set, spec.batch_size, train=True, device=device, mean=mean, std=std,
                            pad=spec.pad, flip=spec.flip, generator=generator, channels_last=spec.channels_last,
                            out_size=spec.fit_images, flip_mode=spec.flip_mode, cutout=spec.cutout)  # small images: upscaled here, on the device
    train: TrainBatches = batches
    if world_size > 1:  # each rank: its slice of every global batch, and of the test set
        train = RankBatches(batches, rank, world_size)
        test_set = test_set.subset(torch.arange(len(test_set)).tensor_split(world_size)[rank])
    val = DeviceBatches(test_set, max(spec.batch_size, 256), train=False, device=device, mean=mean, std=std,
                        channels_last=spec.channels_last, out_size=spec.fit_images)
    what = _held_out(spec)
    desc = f"{splits.name}: {len(train_set)} train / {len(test_set)} {what} images, {len(splits.classes)} classes"
    missing = [c for r in splits.report.values() if r.source != splits.report["train"].source
               for c in r.missing_classes] if "train" in splits.report else []
    if missing:
        desc += f" ({what} split has no images of {', '.join(missing)})"
    bad = [b for r in splits.report.values() for b in r.bad_images]
    return TrainData(train, val, list(splits.classes), mean, std, generator, desc, what, bad)


def _refuse_pad(spec: TrainDataSpec, what: str) -> None:
    """Pad-and-crop is for small images; large ones train on random-resized crops."""
    if spec.pad != TrainDataSpec.pad:
        raise UserError(f"pad (pad-and-crop) is for small images held in memory; {what} trains on "
                        "random-resized crops: drop pad")


def _open_streamed_folder(spec: TrainDataSpec, device: torch.device,
                          norm: tuple[Sequence[float], Sequence[float]] | None) -> TrainData:
    """A folder of large images, streamed: train/ (less a ``val_split`` held out) and val/ or test/; the
    ``train_images``/``test_images`` subsets and ``flip`` apply as for images held in memory."""
    from .feed import DeviceFeed, FedBatches
    from .folder import find_classes, scan_split
    from .normalization import IMAGENET_MEAN, IMAGENET_STD
    from .splits import VAL_SPLIT_SEED, subset_indices
    from .streaming import streaming_loader

    root = Path(spec.data)
    val_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir():
        raise UserError(f"{root} needs train/ and val/ (or test/) folders of class sub-folders")
    if val_dir is None and not spec.val_split:
        raise UserError(f"{root} has no val/ or test/ folder next to train/; add one, or hold out training "
                        "images with --val-split N")
    _refuse_pad(spec, f"{root} (large images, streamed)")
    classes = find_classes(root / "train")
    n = len(scan_split(root / "train", classes))
    train_idx: list[int] = list(range(n))
    if spec.val_split:  # as hold_out: the last val_split of a fixed seeded permutation
        if not 0 < spec.val_split < n:
            raise UserError(f"val_split must be between 1 and {n - 1} (the training split has {n} images), "
                            f"got {spec.val_split}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED)).tolist()
        train_idx, val_idx = order[: n - spec.val_split], order[n - spec.val_split:]
        val_dir = root / "train"
    else:
        assert val_dir is not None
        val_idx = list(range(len(scan_split(val_dir, classes))))
    train_idx = [train_idx[i] for i in subset_indices(len(train_idx), spec.train_images)]
    val_idx = [val_idx[i] for i in subset_indices(len(val_idx), spec.test_images)]
    mean, std = (list(norm[0]), list(norm[1])) if norm else (list(IMAGENET_MEAN), list(IMAGENET_STD))
    common: dict[str, Any] = dict(batch_size=spec.batch_size, workers=spec.workers, image_size=spec.image_size,
                                  resize=spec.resize, skip_bad_images=spec.skip_bad_images,
                                  pin_memory=device.type == "cuda")
    train = streaming_loader(root / "train", classes, train=True, seed=spec.seed, flip=spec.flip,
                             indices=train_idx, **common)
    val = streaming_loader(val_dir, classes, train=False, indices=val_idx, **common)
    feed = DeviceFeed(device, mean, std, channels_last=spec.channels_last)  # the trainer may set its dtype
    what = _held_out(spec)
    desc = (f"{root} (streamed, {spec.workers} loader worker{'s' if spec.workers != 1 else ''}): {len(train_idx)} "
            f"train / {len(val_idx)} {what} images, {len(classes)} classes")
    val_feed = DeviceFeed(device, mean, std, channels_last=spec.channels_last)  # float32, whatever the step's
    return TrainData(StreamedBatches(train, spec.image_size, feed), FedBatches(val, val_feed), classes,
                     mean, std, None, desc, what,
                     found_bad=lambda: train.bad_images + val.bad_images, resize=spec.resize)


def _open_shards(spec: TrainDataSpec, device: torch.device, rank: int, world_size: int,
                 norm: tuple[Sequence[float], Sequence[float]] | None) -> TrainData:
    """WebDataset shards, streamed: this rank's shards for training, its share of the test shards."""
    from . import shards as wd
    from .feed import DeviceFeed, FedBatches
    from .normalization import IMAGENET_MEAN, IMAGENET_STD
    from .streaming import imagenet_transforms

    for key, why in (("val_split", "the val/test split beside them is the held-out set; write shards of a "
                                   "folder with val/ (resnets shard DIR --out SHARDS)"),
                     ("train_images", "every sample is streamed; write shards of fewer images, or train "
                                      "fewer steps with --iterations N"),
                     ("test_images", "every test sample is streamed; write shards of fewer images")):
        if getattr(spec, key):
            raise UserError(f"--{key.replace('_', '-')} does not apply to shards ({spec.data}): {why}")
    limits = wd.ShardLimits.of(spec)
    train_set = wd.open_shards(spec.data, limits)
    test_set = wd.sibling_split(train_set)
    if test_set is None:
        raise UserError(f"{spec.data}: no val or test split in an index.json beside the shards "
                        "(write them with resnets shard DIR --out SHARDS)")
    small = train_set.small_images
    if not small:
        _refuse_pad(spec, f"{spec.data} (large-image shards)")
    mean = list(train_set.mean) if small and train_set.mean else list(IMAGENET_MEAN)
    std = list(train_set.std) if small and train_set.std else list(IMAGENET_STD)
    if norm:
        mean, std = list(norm[0]), list(norm[1])
    eval_tf = wd.eval_transform(mean, std) if small else imagenet_transforms(False, spec.image_size, spec.resize,
                                                                             mean, std, normalize=False)
    pin = device.type == "cuda"
    feed = DeviceFeed(device, mean, std, channels_last=spec.channels_last)  # the trainer may set its dtype
    train = wd.ShardBatches(train_set, spec.batch_size, seed=spec.seed, rank=rank, world_size=world_size,
                            workers=spec.workers, mean=mean, std=std, pad=spec.pad, flip=spec.flip,
                            image_size=None if small else spec.image_size, random_resized_crop=not small,
                            skip_bad_images=spec.skip_bad_images, limits=limits, pin_memory=pin, feed=feed)
    val = wd.eval_loader(test_set, max(spec.batch_size // world_size, 256), rank=rank, world_size=world_size,
                         workers=min(spec.workers, 2), transform=eval_tf, skip_bad_images=spec.skip_bad_images,
                         limits=limits, pin_memory=pin)
    val = FedBatches(val, DeviceFeed(device, mean, std, channels_last=spec.channels_last))
    desc = (f"{spec.data} (streamed shards): {train_set.total} train / {test_set.total} {test_set.split} images, "
            f"{len(train_set.classes)} classes")
    return TrainData(train, val, list(train_set.classes), mean, std, None, desc, _held_out(spec),
                     resize=None if small else spec.resize)


# ---- evaluation -----------------------------------------------------------------------------------------


def open_eval(data: str, device: torch.device, *, mean: Sequence[float], std: Sequence[float], batch_size: int,
              cache_dir: str | None = None, skip_bad_images: bool = False, workers: int = 0,
              tta: str | None = None, channels_last: bool = True, max_images: int | None = None,
              classes: list[str] | None = None, image_size: int | None = None, resize: int | None = None,
              progress: bool = True) -> EvalData:
    """Normalised (``mean``, ``std``) evaluation batches of ``data``'s test/val split, never its training split,
    from any source ``open_train`` reads. ``classes`` (the model's, when given) fixes the labels.
    ``tta="10crop"`` makes streamed large images ``resize`` pixels large (default ``image_size`` * 8/7), to
    cut 10 crops of ``image_size`` (default 224) from; ``max_images`` keeps a fixed seeded subset;
    ``image_size`` also scales in-memory images of mixed sizes (as ``--image-size`` in training)."""
    from .shards import is_shard_spec
    from .splits import eval_split_dir

    crop = image_size or 224
    resize = resize or round(crop * 256 / 224)
    if is_shard_spec(data):
        from .feed import DeviceFeed

        return _eval_shards(data, DeviceFeed(device, mean, std, channels_last=channels_last), batch_size=batch_size,
                            workers=workers, tta=tta, crop=crop, resize=resize, skip_bad_images=skip_bad_images)
    path = Path(data).expanduser()
    split_dir = eval_split_dir(path) if path.is_dir() else None
    if split_dir is not None and is_streaming_folder(split_dir):
        from .feed import DeviceFeed

        feed = DeviceFeed(device, mean, std, channels_last=channels_last)
        return _eval_streamed_folder(path, split_dir, feed, batch_size=batch_size, workers=workers, tta=tta,
                                     crop=crop, resize=resize, skip_bad_images=skip_bad_images,
                                     max_images=max_images, classes=classes)
    from .batches import DeviceBatches
    from .splits import limit_images, open_eval_split

    test, report = open_eval_split(data, classes, cache_dir=cache_dir, skip_bad_images=skip_bad_images,
                                   image_size=image_size, progress=progress, max_images=max_images)
    batches = DeviceBatches(limit_images(test, max_images), batch_size, train=False, device=device, mean=mean,
                            std=std, channels_last=channels_last, out_size=image_size)
    return EvalData(batches, list(test.classes), None, list(report.bad_images), list(report.missing_classes))


def _eval_streamed_folder(root: Path, split_dir: Path, feed: DeviceFeed, *,
                          batch_size: int, workers: int, tta: str | None, crop: int, resize: int,
                          skip_bad_images: bool, max_images: int | None, classes: list[str] | None) -> EvalData:
    """A folder of large images, streamed: resized to ``resize``, centre crops of ``crop`` (10-crop: whole),
    normalised on the device by ``feed``."""
    from .feed import FedBatches
    from .folder import find_classes
    from .splits import subset_indices
    from .streaming import streaming_loader

    if classes is None:
        train = root / "train"
        classes = find_classes(train if split_dir != root and train.is_dir() else split_dir, allow_empty=True)
    loader = streaming_loader(split_dir, classes, train=False, batch_size=batch_size, workers=workers,
                              image_size=resize if tta == "10crop" else crop, resize=resize,
                              skip_bad_images=skip_bad_images, pin_memory=feed.device.type == "cuda")
    dataset = loader.dataset
    samples = dataset.samples
    dataset.samples = [samples[i] for i in sorted(subset_indices(len(samples), max_images))]
    counts = {c: 0 for c in classes}
    for _, label in dataset.samples:
        counts[classes[label]] += 1
    return EvalData(FedBatches(loader, feed), list(classes), crop if tta == "10crop" else None, loader.bad_images,
                    [c for c, n in counts.items() if n == 0])


def _eval_shards(data: str, feed: DeviceFeed, *, batch_size: int, workers: int,
                 tta: str | None, crop: int, resize: int, skip_bad_images: bool) -> EvalData:
    """Shards: the val/test split beside named training shards, else the shards named; uint8 crops of large
    images normalised on the device by ``feed``."""
    from . import shards as wd
    from .feed import FedBatches
    from .streaming import imagenet_transforms

    named = wd.open_shards(data)
    split = wd.sibling_split(named) if named.split == "train" else named
    if split is None:
        raise UserError(f"{data}: no val or test split in an index.json beside the shards; name the test "
                        "shards themselves (e.g. --data SHARDS/test-{000000..000001}.tar)")
    mean, std = feed.mean, feed.std
    if split.small_images:
        transform = wd.eval_transform(mean, std)
    else:
        transform = imagenet_transforms(False, resize if tta == "10crop" else crop, resize, normalize=False)
    loader = wd.eval_loader(split, batch_size, workers=min(workers, 2), transform=transform,
                            skip_bad_images=skip_bad_images, pin_memory=feed.device.type == "cuda")
    return EvalData(FedBatches(loader, feed), list(split.classes), crop if tta == "10crop" and not split.small_images else None, [],
                    [])
