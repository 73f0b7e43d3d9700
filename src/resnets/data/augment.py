"""Batched augmentation on the device for images held in memory, and the test-time views of the speed records.

Training (used by :class:`~resnets.data.batches.DeviceBatches`; every draw a pure function of (seed, epoch)):

* flips: ``"random"``, each image mirrored with probability 1/2 every epoch; ``"alternate"`` (the speed
  records' alternating flip), each image's side drawn once for the run and swapped every epoch, so any two
  consecutive epochs show every image both ways round;
* cutout: a ``size`` x ``size`` square zeroed at a random centre (clipped at the image's border), applied to
  whole batches with one mask.

Evaluation: :class:`TTAModel` averages the class probabilities of ``"flip"`` (the image and its mirror) or
``"flip-translate"`` views (those two at weight 1/2, and both shifted one pixel up-left and down-right at 1/2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..runtime import derive_seed

FLIP_MODES = ("random", "alternate")
TTA_VIEWS = ("flip", "flip-translate")


def plan_flips(n: int, mode: str, *, seed: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
    """Which of images ``0..n-1`` are mirrored in ``epoch`` (bool, by image index): ``"random"`` draws from
    ``generator`` (the epoch's); ``"alternate"`` draws once from ``seed`` and swaps every epoch."""
    if mode == "random":
        return torch.rand(n, generator=generator) < 0.5
    if mode == "alternate":
        base = torch.rand(n, generator=torch.Generator().manual_seed(derive_seed("flips", seed))) < 0.5
        return base ^ bool(epoch % 2)
    raise UserError(f"unknown flip mode {mode!r}; choose one of: {', '.join(FLIP_MODES)}")


def plan_cutout(n: int, size: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Top-left corners (n x 2, may lie off the image) of ``size`` squares centred uniformly in the image."""
    centres = torch.stack([torch.randint(0, height, (n,), generator=generator),
                           torch.randint(0, width, (n,), generator=generator)], dim=1)
    return centres - size // 2


def apply_cutout(batch: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """``batch`` (N x C x H x W) with the square of side ``size`` at each image's ``corners`` zeroed."""
    h, w = batch.shape[2:]
    rows = torch.arange(h, device=batch.device)
    cols = torch.arange(w, device=batch.device)
    top, left = corners[:, :1], corners[:, 1:]
    in_rows = (rows >= top) & (rows < top + size)  # N x H
    in_cols = (cols >= left) & (cols < left + size)  # N x W
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return batch * keep[:, None].to(batch.dtype)


def translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` shifted by (dy, dx) pixels, the border reflected into the gap."""
    p = max(abs(dy), abs(dx))
    h, w = x.shape[-2:]
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    return padded[..., p - dy:p - dy + h, p - dx:p - dx + w]


def tta_views(x: torch.Tensor, mode: str) -> list[tuple[torch.Tensor, float]]:
    """(view, weight) pairs whose weights sum to 1 (see the module docstring)."""
    if mode == "flip":
        return [(x, 0.5), (x.flip(-1), 0.5)]
    if mode == "flip-translate":
        flipped = x.flip(-1)
        shifted = [translate(v, d, d) for v in (x, flipped) for d in (-1, 1)]
        return [(x, 0.25), (flipped, 0.25)] + [(v, 0.125) for v in shifted]
    raise UserError(f"unknown test-time augmentation {mode!r}; choose one of: {', '.join(TTA_VIEWS)}")


class TTAModel(nn.Module):
    """``model`` evaluated on the views of ``mode``: returns the log of their weighted mean class probabilities
    (so a softmax of the output is that mean, and cross-entropy on it is its NLL)."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        tta_views(torch.zeros(1, 1, 4, 4), mode)  # an unknown mode fails here
        self.model, self.mode = model, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for view, weight in tta_views(x, self.mode):  # one view at a time: the memory of one batch
            probs = self.model(view.contiguous(memory_format=_format_of(x))).float().softmax(1) * weight
            total = probs if total is None else total + probs
        assert total is not None
        return total.clamp_min(1e-12).log()


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
