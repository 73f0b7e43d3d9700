"""A bounded stage of the server: at most ``limit`` requests in it at once, the next refused with a 503."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import BusyError


class Slots:
    """``limit`` places for requests waiting for or in a stage (decoding, Grad-CAM); thread-safe."""

    def __init__(self, limit: int, what: str, flag: str) -> None:
        self.limit = limit
        self.what = what  # "waiting to be decoded"
        self.flag = flag  # "--max-decode-queue"
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        """Take a place; BusyError (503, Retry-After) when all are taken."""
        with self._lock:
            if self.used >= self.limit:
                raise BusyError(self.limit, self.what, self.flag)
            self.used += 1

    def release(self, *_: object) -> None:
        """Give a place back (any arguments are ignored, so that it can be a future's done callback)."""
        with self._lock:
            self.used -= 1

    @contextmanager
    def held(self) -> Iterator[None]:
        """A place for the duration of the block."""
        self.take()
        try:
            yield
        finally:
            self.release()
