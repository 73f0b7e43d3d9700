"""The data contract: what every source hands a run (:class:`TrainBatches`, :class:`TrainData`) and an evaluation
(:class:`EvalData`). A leaf module: ``sources``, ``batches``, ``shards`` and ``streaming`` import it, it imports
none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..errors import UserError


class TrainBatches(Protocol):
    """Training batches (x normalised float NCHW on the run's device, y int64) of this process, epoch by epoch,
    resumable.

    ``full_size``: the side of the training images (e.g. 32, 224); ``resizable``: whether
    :meth:`set_image_size` (progressive resizing) works.
    """

    full_size: int
    resizable: bool = False

    def __len__(self) -> int:
        """Batches (optimiser steps) per epoch."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next ``iter_from`` replays."""
        ...

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from index ``start``, exactly as if the first ``start`` were skipped."""
        ...

    def set_image_size(self, size: int | None) -> None:
        """Train on images of side ``size`` from now on (None: ``full_size``); UserError unless ``resizable``."""
        raise UserError("progressive resizing works with images held in memory, streamed folders and large-image "
                        "shards, not with small-image shards")

    def close(self) -> None:
        """Release what the batches hold beyond memory (worker processes); nothing by default."""


@dataclass
class TrainData:
    """What a run needs from its data: batches, class names and the input normalisation."""

    train: TrainBatches
    val: Iterable[tuple[torch.Tensor, torch.Tensor]]
    classes: list[str]
    mean: list[float]
    std: list[float]
    generator: torch.Generator | None  # the generator whose state a checkpoint saves (None: nothing to save)
    description: str
    held_out: str  # what ``val`` is: "validation" (a val split held out of train) or "test"
    bad_images: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) skipped while opening
    found_bad: Callable[[], list[tuple[str, str]]] | None = None  # streamed: those skipped so far, while training
    resize: int | None = None  # large images: the shorter side before the held-out centre crop of train.full_size

    def close(self) -> None:
        """Stop the loaders' worker processes (training is over); the batches are not read after this."""
        for batches in (self.train, self.val):
            close = getattr(batches, "close", None)
            if close is not None:
                close()


@dataclass
class EvalData:
    """Evaluation batches of a data set's test/val split, and what evaluating them needs to know."""

    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    classes: list[str]
    crop: int | None  # 10-crop: the side of the crops cut from the (larger) batches; None: the batches' own
    bad_images: list[tuple[str, str]]  # skipped; streamed: filled in as the batches are read
    missing_classes: list[str]  # classes with no image in the split
