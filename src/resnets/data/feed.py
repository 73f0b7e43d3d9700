"""uint8 batches to the device: pinned, copied one batch ahead on a side CUDA stream, normalised there.

Streamed loaders' workers return uint8 crops (a quarter of float32's bytes through shared memory and over the
bus). :class:`DeviceFeed` moves each batch to the device and normalises it there, as the in-memory
:class:`~resnets.data.batches.DeviceBatches` does: ``x * 1/(255 std) - mean/std``, in ``dtype`` (the step's
precision), channels_last. On CUDA the copy of batch ``b + 1`` is queued on a side stream (from pinned memory)
before batch ``b`` is handed out, and the compute stream waits for batch ``b``'s copy alone (an event), so the
copy overlaps the step; elsewhere the batches are moved and normalised in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from ..errors import UserError


class DeviceFeed:
    """Normalise uint8 NCHW batches on ``device``: ``mean``/``std`` per channel in 0..1, output ``dtype``,
    channels_last if ``channels_last``. Float batches (already normalised) are moved, never normalised again."""

    def __init__(self, device: str | torch.device, mean: Sequence[float], std: Sequence[float], *,
                 channels_last: bool = True, dtype: torch.dtype = torch.float32) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UserError(f"mean and std need 3 values (std > 0), got {list(mean)} and {list(std)}")
        self.device = torch.device(device)
        self.mean, self.std = list(mean), list(std)
        self.channels_last = channels_last
        self.dtype = dtype
        std_t = torch.tensor(list(std), dtype=torch.float64)
        self._scale = (1.0 / (255.0 * std_t)).to(torch.float32).view(1, 3, 1, 1)
        self._shift = (torch.tensor(list(mean), dtype=torch.float64) / std_t).to(torch.float32).view(1, 3, 1, 1)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # moved on first use, not when built

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """A uint8 NCHW batch on the device as normalised ``dtype``: computed in float32, rounded once."""
        if x.dtype != torch.uint8:
            return x
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt)
        if x.device not in self._on:
            self._on[x.device] = (self._scale.to(x.device), self._shift.to(x.device))
        scale, shift = self._on[x.device]
        out.copy_(x).mul_(scale).sub_(shift)
        return out if self.dtype == torch.float32 else out.to(self.dtype, memory_format=fmt)

    def __call__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The (x, y) batches of ``batches`` on the device, x normalised."""
        if self.device.type != "cuda":
            for x, y in batches:
                yield self.normalise(x.to(self.device)), y.to(self.device)
            return
        yield from self._cuda(batches)

    def _cuda(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        side = torch.cuda.Stream(self.device)

        def send(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Any]:
            x, y = batch
            if x.device.type == "cpu" and not x.is_pinned():
                x, y = x.pin_memory(), y.pin_memory()
            with torch.cuda.stream(side):
                xd, yd = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(side)
            return xd, yd, done

        it = iter(batches)
        first = next(it, None)
        pending = send(first) if first is not None else None
        while pending is not None:
            x, y, done = pending
            following = next(it, None)
            pending = send(following) if following is not None else None  # queued before this one is used
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(done)
            x.record_stream(compute)  # memory of the side stream's copy, used on the compute stream
            y.record_stream(compute)
            yield self.normalise(x), y


class FedBatches:
    """A loader of uint8 CPU batches seen through a :class:`DeviceFeed`: iterate for device batches; ``len``,
    ``bad_images`` and ``close`` are the loader's."""

    def __init__(self, loader: Any, feed: DeviceFeed) -> None:
        self.loader, self.feed = loader, feed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.feed(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def bad_images(self) -> list[tuple[str, str]]:
        return getattr(self.loader, "bad_images", [])

    def close(self) -> None:
        close = getattr(self.loader, "close", None)
        if close is not None:
            close()

