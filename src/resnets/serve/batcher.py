"""Dynamic batching: requests arriving together run as one forward pass on one inference thread.

Each request puts its images (an N x 3 x S x S tensor) in a bounded queue and awaits an asyncio future; the
thread takes the oldest request, adds waiting requests of the same kind until ``max_batch`` images, runs the
batch, and resolves each future through ``loop.call_soon_threadsafe``. Requests whose deadline passed before
their batch started are dropped.

How long a batch waits to fill: while other requests are still arriving (reading and decoding their images,
marked by :meth:`Batcher.arriving`), up to ``max_wait_ms`` since the first; when none is, not at all. So a lone
request runs at once (no added latency at concurrency 1), and requests that come together run together.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .errors import QueueFullError, TimeoutError_

BatchFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Item:
    kind: str
    inputs: torch.Tensor
    future: asyncio.Future[torch.Tensor]
    loop: asyncio.AbstractEventLoop
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class Arrival:
    """A request on its way to the queue (see :meth:`Batcher.arriving`)."""

    arrived: bool = False


class Batcher:
    """Runs ``functions[kind]`` on batches of queued inputs in one thread; ``submit`` awaits a request's rows."""

    def __init__(self, functions: dict[str, BatchFn], *, max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256, timeout_s: float = 30.0,
                 on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.functions = functions
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.on_batch = on_batch or (lambda n: None)
        self.on_depth = on_depth or (lambda n: None)
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._arriving = 0  # requests reading or decoding their images: a forming batch waits for them
        self._thread = threading.Thread(target=self._work, name="resnets-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for the model."""
        return len(self._queue)

    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Mark a request that is still reading and decoding its images, so that a batch being formed waits for
        it (up to ``max_wait_ms``); pass the ``Arrival`` to :meth:`submit`, or leave the block (an error)."""
        arrival = Arrival()
        with self._cond:
            self._arriving += 1
        try:
            yield arrival
        finally:
            self._arrived(arrival)

    def _arrived(self, arrival: Arrival | None) -> None:
        with self._cond:
            if arrival is not None and not arrival.arrived:
                arrival.arrived = True
                self._arriving -= 1
                self._cond.notify()

    async def submit(self, kind: str, inputs: torch.Tensor, arrival: Arrival | None = None) -> torch.Tensor:
        """The output rows for ``inputs`` (N x ...), computed in a batch; QueueFullError when the queue is full,
        TimeoutError_ after ``timeout_s``. ``arrival``: this request's mark from :meth:`arriving`, cleared as
        it joins the queue."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[torch.Tensor] = loop.create_future()
        item = _Item(kind, inputs, future, loop, time.monotonic() + self.timeout_s)
        with self._cond:
            self._arrived(arrival)  # the condition's lock is reentrant
            if self._closing:
                raise QueueFullError(len(self._queue))
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(len(self._queue))
            self._queue.append(item)
            self.on_depth(len(self._queue))
            self._cond.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            future.cancel()  # the worker skips it, or drops its result
            raise TimeoutError_(self.timeout_s) from None

    def close(self, timeout: float | None = None) -> None:
        """Take no more requests, finish those queued, and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self) -> list[_Item] | None:
        """The next batch: the oldest request and those of its kind that join while others are still arriving,
        within ``max_wait``."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, count = [first], len(first.inputs)
            until = time.monotonic() + self.max_wait
            while count < self.max_batch:
                joining = next((it for it in self._queue if it.kind == first.kind
                                and count + len(it.inputs) <= self.max_batch), None)
                if joining is not None:
                    self._queue.remove(joining)
                    batch.append(joining)
                    count += len(joining.inputs)
                    continue
                left = until - time.monotonic()
                if left <= 0 or self._closing or not self._arriving:
                    break
                self._cond.wait(left)
            self.on_depth(len(self._queue))
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            now = time.monotonic()
            live = [it for it in batch if not it.future.cancelled() and it.deadline > now]
            if not live:
                continue
            try:
                inputs = torch.cat([it.inputs for it in live]) if len(live) > 1 else live[0].inputs
                parts = []
                for chunk in inputs.split(self.max_batch):  # a request larger than max_batch runs in parts
                    parts.append(self.functions[live[0].kind](chunk))
                    self.on_batch(len(chunk))
                outputs = torch.cat(parts)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for it in live:
                    _call(it, _set_exception, exc)
                continue
            start = 0
            for it in live:
                rows = outputs[start:start + len(it.inputs)]
                start += len(it.inputs)
                _call(it, _set_result, rows)


def _call(item: _Item, setter: Callable[..., None], value: object) -> None:
    """Run ``setter(item.future, value)`` on the item's event loop (nothing if that loop has closed)."""
    try:
        item.loop.call_soon_threadsafe(setter, item.future, value)
    except RuntimeError:
        pass


def _set_result(future: asyncio.Future[torch.Tensor], value: torch.Tensor) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[torch.Tensor], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
