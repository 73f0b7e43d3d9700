"""In-memory small-image data sets (:class:`ImageTensors`) and the report of how one was loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError


@dataclass
class ImageTensors:
    """A small-image data set held in memory: uint8 images N x 3 x H x W, int64 labels N, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    _stats: tuple[tuple[float, ...], tuple[float, ...]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise UserError(f"images must be uint8 N x 3 x H x W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise UserError(f"labels must be int64 of shape ({self.images.shape[0]},), "
                            f"got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean of the pixels, in 0..1."""
        return self._channel_stats()[0]  # type: ignore[return-value]

    def std(self) -> tuple[float, float, float]:
        """Per-channel (population) standard deviation of the pixels, in 0..1."""
        return self._channel_stats()[1]  # type: ignore[return-value]

    def _channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._stats is None:
            if len(self) == 0:
                raise UserError("cannot compute mean/std of an empty data set")
            total = torch.zeros(3, dtype=torch.float64)
            squares = torch.zeros(3, dtype=torch.float64)
            for start in range(0, len(self), 2048):  # chunks: never a float copy of the whole set
                chunk = self.images[start:start + 2048].to(torch.float64).div_(255)
                total += chunk.sum(dim=(0, 2, 3))
                squares += chunk.square_().sum(dim=(0, 2, 3))
            count = len(self) * self.images.shape[2] * self.images.shape[3]
            mean = total / count
            std = (squares / count - mean.square()).clamp_min(0).sqrt()
            self._stats = (tuple(mean.tolist()), tuple(std.tolist()))
        return self._stats

    def subset(self, indices: torch.Tensor | list[int]) -> ImageTensors:
        """The images and labels at ``indices`` (same class list)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return ImageTensors(self.images[idx], self.labels[idx], list(self.classes))

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name."""
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, counts, strict=True))


@dataclass
class LoadReport:
    """How a split was loaded: where from, what was found, skipped or resized, and whether the cache hit."""

    source: str
    num_images: int = 0
    classes: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    missing_classes: list[str] = field(default_factory=list)
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    resized: int = 0
    cache_hit: bool = False
    cache_path: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for logs."""
        parts = [f"{self.source}: {self.num_images} images, {len(self.classes)} classes"]
        if self.missing_classes:
            parts.append(f"missing classes {', '.join(self.missing_classes)}")
        if self.bad_images:
            parts.append(f"{len(self.bad_images)} bad images skipped")
        if self.resized:
            parts.append(f"{self.resized} resized")
        if self.cache_path is not None:
            parts.append("from cache" if self.cache_hit else "decoded and cached")
        parts.append(f"{self.seconds:.1f} s")
        return "; ".join(parts)
