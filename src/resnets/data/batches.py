"""The fast small-image loader: whole data set on the device, batches cut and augmented with tensor ops.

Training batches use the paper's CIFAR augmentation (pad 4 pixels with zeros, take a random crop of the
original size, flip horizontally with probability 1/2), done for the whole batch at once with one gather.
The order and the augmentation of an epoch are a pure function of (seed, epoch), so a resumed run replays
exactly the same batches, from any batch index (:meth:`DeviceBatches.iter_from`).

Progressive resizing: :meth:`DeviceBatches.set_image_size` makes the augmented batches smaller (an antialiased
bilinear downscale of the whole crop, so the network sees the whole object at a lower resolution);
:func:`progressive_image_size` is the schedule that grows the size back to full over the first part of a run.

Upscaling on the device: ``out_size=N`` resizes every batch, after its augmentation at the images' own size, to
N pixels (bilinear, in floating point), so 32-pixel images are held once at 32 pixels and fed to a network at
64-128 (fine-tuning a network trained at 224 on small images).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..runtime import derive_seed
from .augment import FLIP_MODES, apply_cutout, plan_cutout, plan_flips
from .contract import TrainBatches
from .tensors import ImageTensors


def progressive_image_size(epoch: int, num_epochs: int, full: int, start: int, until: float) -> int:
    """The training image size for 0-based ``epoch``: ``start`` at epoch 0, growing linearly to ``full`` by
    epoch ``round(until * num_epochs)`` and ``full`` from then on; rounded to a multiple of 4 pixels."""
    ramp = round(until * num_epochs)
    if epoch >= ramp or start >= full:
        return full
    size = start + (full - start) * epoch / ramp
    return min(full, max(4, 4 * int(size / 4 + 0.5)))  # halves round up


class DeviceBatches(TrainBatches):
    """Iterate (x, y) batches of an :class:`ImageTensors`: x float NCHW normalised, y int64, on ``device``.

    ``train=True``: a new random order every epoch (see :meth:`set_epoch`), and per image a random crop
    of size ``crop`` (default: the image size) from the image zero-padded by ``pad``, flipped
    horizontally with probability 1/2 if ``flip``; ``drop_last`` defaults to True. ``train=False``: the
    images in order, centre-cropped to ``crop`` if given, never augmented; ``drop_last`` defaults to False.
    ``generator`` supplies the seed (``generator.initial_seed()``); without it the seed is ``seed``.
    ``mean``/``std`` are per-channel in 0..1, e.g. ``data.mean()``/``data.std()`` of the training split.
    ``out_size``: resize every batch to this height (width in proportion) after cropping, e.g. to upscale
    small images on the device. ``full_size`` is ``out_size`` or the crop height; progressive resizing
    (:meth:`set_image_size`) works. ``flip_mode``: ``"random"`` or ``"alternate"`` (each image's side swapped
    every epoch) and ``cutout``: a square of that side zeroed in every training image (:mod:`.augment`).
    """

    resizable = True

    def __init__(self, data: ImageTensors, batch_size: int, *, train: bool, device: str | torch.device = "cpu",
                 mean: Sequence[float], std: Sequence[float], pad: int = 4, flip: bool = True,
                 crop: int | tuple[int, int] | None = None, drop_last: bool | None = None,
                 generator: torch.Generator | None = None, seed: int = 0, channels_last: bool = True,
                 dtype: torch.dtype = torch.float32, out_size: int | None = None, flip_mode: str = "random",
                 cutout: int = 0) -> None:
        if batch_size <= 0:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UserError(f"mean and std need 3 values (std > 0), got {mean} and {std}")
        if pad < 0:
            raise UserError(f"pad must be >= 0, got {pad}")
        if flip_mode not in FLIP_MODES:
            raise UserError(f"flip_mode must be one of {', '.join(FLIP_MODES)}, not {flip_mode!r}")
        if cutout < 0:
            raise UserError(f"cutout must be >= 0 pixels, got {cutout}")
        self.flip_mode = flip_mode
        self.cutout = cutout if train else 0
        self.device = torch.device(device)
        self.images = data.images.to(self.device)  # the whole uint8 set, moved once
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.pad = pad if train else 0
        self.flip = flip and train
        self.drop_last = train if drop_last is None else drop_last
        self.seed = generator.initial_seed() if generator is not None else seed
        self.channels_last = channels_last
        self.dtype = dtype
        height, width = data.image_size
        self.crop = (height, width) if crop is None else ((crop, crop) if isinstance(crop, int) else tuple(crop))
        if self.crop[0] > height + 2 * self.pad or self.crop[1] > width + 2 * self.pad:
            raise UserError(f"crop {self.crop} larger than the (padded) images {height}x{width} + pad {self.pad}")
        if out_size is not None and out_size < 1:
            raise UserError(f"image size must be positive, got {out_size}")
        self.full_size = out_size or self.crop[0]
        std_t = torch.tensor(std, dtype=torch.float64)
        self._scale = (1.0 / (255.0 * std_t)).to(dtype).view(1, 3, 1, 1).to(self.device)
        self._shift = (torch.tensor(mean, dtype=torch.float64) / std_t).to(dtype).view(1, 3, 1, 1).to(self.device)
        self.epoch = 0
        self.image_size: tuple[int, int] | None = None  # None: the crop size; else resize batches to this
        self.set_image_size(None)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration replays."""
        self.epoch = int(epoch)

    def set_image_size(self, size: int | None) -> None:
        """Resize every batch to height ``size`` from now on, the width in proportion (``None``: ``full_size``;
        the crop height: no resizing)."""
        if size is not None and size < 1:
            raise UserError(f"image size must be positive, got {size}")
        size = self.full_size if size is None else size
        ch, cw = self.crop
        self.image_size = None if size == ch else (size, max(1, round(size * cw / ch)))

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This epoch's order, crop offsets (N x 2) and flip mask (N), each by position in the order, drawn on
        the CPU from the epoch seed (alternating flips: from the run's seed)."""
        n = len(self.labels)
        if not self.train:
            return torch.arange(n), None, None
        g = torch.Generator().manual_seed(derive_seed("batches", self.seed, self.epoch))
        order = torch.randperm(n, generator=g)
        height, width = self.images.shape[2:]
        max_dy = height + 2 * self.pad - self.crop[0]
        max_dx = width + 2 * self.pad - self.crop[1]
        offsets = torch.stack([torch.randint(0, max_dy + 1, (n,), generator=g),
                               torch.randint(0, max_dx + 1, (n,), generator=g)], dim=1)
        if not self.flip:
            flips = torch.zeros(n, dtype=torch.bool)
        elif self.flip_mode == "random":
            flips = torch.rand(n, generator=g) < 0.5
        else:  # by image, then put in this epoch's order
            flips = plan_flips(n, self.flip_mode, seed=self.seed, epoch=self.epoch, generator=g)[order]
        return order, offsets, flips

    def _cutout_plan(self) -> torch.Tensor | None:
        """This epoch's cutout corners (N x 2, by position in the order), or None without cutout."""
        if not self.cutout:
            return None
        g = torch.Generator().manual_seed(derive_seed("cutout", self.seed, self.epoch))
        return plan_cutout(len(self.labels), self.cutout, *self.crop, g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int, *, rank: int = 0, world_size: int = 1
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The current epoch's batches from index ``start_batch`` on (the same as skipping that many).

        With ``world_size > 1`` (data-parallel training), only slice ``rank`` of ``world_size`` equal slices
        of each batch, with the crops and flips those images get in one process; ``world_size`` must divide
        the batch size.
        """
        per_rank = self.batch_size // world_size
        order, offsets, flips = self._plan()
        corners = self._cutout_plan()
        order = order.to(self.device)
        if offsets is not None:
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        if corners is not None:
            corners = corners.to(self.device)
        for b in range(max(0, start_batch), len(self)):
            first = b * self.batch_size + rank * per_rank
            sl = slice(first, first + per_rank)
            idx = order[sl]
            batch = self.images[idx]
            if offsets is not None:
                batch = self._augment(batch, offsets[sl], flips[sl])
                if corners is not None:
                    batch = apply_cutout(batch, corners[sl], self.cutout)
            elif self.crop != tuple(batch.shape[2:]):
                batch = self._center_crop(batch)
            yield self._resize(self._normalise(batch)), self.labels[idx]

    def unaugmented(self, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every image once, in order, never augmented: centre-cropped to ``crop`` and resized as the batches
        are (e.g. to compute a frozen backbone's features once)."""
        for first in range(0, len(self.labels), batch_size):
            batch = self.images[first:first + batch_size]
            if self.crop != tuple(batch.shape[2:]):
                batch = self._center_crop(batch)
            yield self._resize(self._normalise(batch)), self.labels[first:first + batch_size]

    def _augment(self, batch: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop windows at ``offsets`` of the zero-padded batch, mirrored where ``flips``: one gather."""
        p = self.pad
        padded = F.pad(batch, (p, p, p, p)) if p else batch
        n, c, ph, pw = padded.shape
        ch, cw = self.crop
        rows = offsets[:, :1] + torch.arange(ch, device=batch.device)  # n x ch
        cols_fwd = torch.arange(cw, device=batch.device)
        cols = offsets[:, 1:] + torch.where(flips[:, None], cw - 1 - cols_fwd, cols_fwd)  # n x cw
        flat = (rows[:, :, None] * pw + cols[:, None, :]).view(n, 1, ch * cw).expand(n, c, ch * cw)
        return padded.view(n, c, ph * pw).gather(2, flat).view(n, c, ch, cw)

    def _center_crop(self, batch: torch.Tensor) -> torch.Tensor:
        ch, cw = self.crop
        top = (batch.shape[2] - ch) // 2
        left = (batch.shape[3] - cw) // 2
        return batch[:, :, top:top + ch, left:left + cw]

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size is None:
            return x
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        resized = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
        return resized.contiguous(memory_format=fmt)

    def _normalise(self, batch: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = torch.empty(batch.shape, dtype=self.dtype, device=batch.device, memory_format=fmt)
        x.copy_(batch)
        return x.mul_(self._scale).sub_(self._shift)


class RankBatches(TrainBatches):
    """This rank's share of a ``DeviceBatches``: the same epochs and steps, ``1 / world_size`` of each batch.

    Wraps a :class:`DeviceBatches` built with the **global** batch size; ``len`` is the number of global
    batches (steps), and batch ``b`` of the epoch is rank ``rank``'s slice of global batch ``b``, with the
    same crop and flip it gets in a single-process run.
    """

    resizable = True

    def __init__(self, batches: DeviceBatches, rank: int, world_size: int) -> None:
        if batches.batch_size % world_size:
            raise UserError(f"the global batch size {batches.batch_size} must be divisible by the number of "
                            f"processes {world_size}")
        if not batches.drop_last and len(batches.labels) % batches.batch_size:
            raise UserError("rank-sharded batches need drop_last (equal batches on every rank)")
        self.inner, self.rank, self.world_size = batches, rank, world_size
        self.full_size = batches.full_size

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def set_image_size(self, size: int | None) -> None:
        self.inner.set_image_size(size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of the current epoch from global step ``start`` on."""
        return self.inner.iter_from(start, rank=self.rank, world_size=self.world_size)
