"""The errors a request can end in: an HTTP status with one readable sentence."""

from __future__ import annotations


class ApiError(Exception):
    """A request that fails with ``status`` and ``detail``: answered as ``{"detail": ...}``, or on the KServe v2
    routes as ``{"error": ...}``, as that protocol has it."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class QueueFullError(ApiError):
    """The batcher's queue is full: 503 with Retry-After."""

    def __init__(self, depth: int) -> None:
        super().__init__(503, f"the server is busy ({depth} requests queued); retry shortly",
                         {"Retry-After": "1"})


class TimeoutError_(ApiError):
    """A request waited longer than ``--timeout-s``: 504."""

    def __init__(self, seconds: float) -> None:
        super().__init__(504, f"the request waited more than {seconds:g} s for the model (--timeout-s)")


class BusyError(ApiError):
    """A bounded stage of the server (decoding, Grad-CAM) is full: 503 with Retry-After."""

    def __init__(self, limit: int, what: str, flag: str) -> None:
        super().__init__(503, f"the server is busy: {limit} requests are already {what} ({flag}); retry shortly",
                         {"Retry-After": "1"})
