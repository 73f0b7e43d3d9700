"""The options of ``resnets serve``, as one dataclass that travels to worker processes as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from ..errors import UserError

BACKENDS = ("torch", "onnx", "int8")
#: The environment variable that carries the settings to ``--workers`` processes (see ``app.app_from_env``).
SETTINGS_ENV = "RESNETS_SERVE_SETTINGS"
#: The server's default pixel limit: a 24-megapixel photo (6000 x 4000) fits, with room for 6016 x 4016.
MAX_PIXELS = 25_000_000


@dataclass
class ServeSettings:
    """What to serve and how; ``check`` validates it with one-line UserErrors."""

    weights: str
    model: str | None = None
    variant: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "torch"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256  # requests waiting for the model; more are refused with 503
    timeout_s: float = 30.0
    max_body_mb: float = 20.0
    workers: int = 1
    api_key_file: str | None = None
    no_auth: bool = False
    precision: str = "auto"
    threads: int | None = None  # torch intra-op threads per process (None: torch's default)
    decode_threads: int = 2  # threads decoding and preprocessing images
    max_pixels: int = MAX_PIXELS  # largest image accepted, checked on its header
    max_decode_queue: int = 32  # requests waiting for or in decoding (KServe: JSON parsing); more get 503
    max_explain_queue: int = 4  # Grad-CAM requests waiting or running; more get 503

    @property
    def max_body_bytes(self) -> int:
        """The request body limit in bytes."""
        return int(self.max_body_mb * 1024 * 1024)

    def check(self) -> None:
        """UserError for an option out of range, or a non-loopback host without an API key or --no-auth."""
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"unknown precision {self.precision!r}; choose auto, bf16 or fp32")
        for name, value, low in (("--max-batch", self.max_batch, 1), ("--max-queue", self.max_queue, 1),
                                 ("--workers", self.workers, 1), ("--max-wait-ms", self.max_wait_ms, 0),
                                 ("--port", self.port, 0), ("--max-pixels", self.max_pixels, 1),
                                 ("--max-decode-queue", self.max_decode_queue, 1),
                                 ("--max-explain-queue", self.max_explain_queue, 1),
                                 ("decode_threads", self.decode_threads, 1)):
            if value < low:
                raise UserError(f"{name} must be at least {low}, not {value}")
        if not self.timeout_s > 0 or not self.max_body_mb > 0:
            raise UserError("--timeout-s and --max-body-mb must be positive")
        if self.port > 65535:
            raise UserError(f"--port must be at most 65535, not {self.port}")
        if self.api_key_file and self.no_auth:
            raise UserError("give --api-key-file or --no-auth, not both")
        if not is_loopback(self.host) and not self.api_key_file and not self.no_auth:
            raise UserError(f"--host {self.host} exposes the server beyond this machine; give --api-key-file FILE "
                            "(clients then send 'Authorization: Bearer <key>') or --no-auth to allow anyone")
        if self.api_key_file:
            read_api_key(self.api_key_file)

    def to_json(self) -> str:
        """The settings as JSON (for ``SETTINGS_ENV``)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        """Settings written by ``to_json``."""
        return cls(**json.loads(text))


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.x, ::1, localhost)."""
    return host == "localhost" or host.startswith("127.") or host in ("::1", "[::1]")


def read_api_key(path: str | os.PathLike[str]) -> str:
    """The API key in file ``path``, stripped; UserError if it cannot be read or is empty."""
    try:
        with open(path, encoding="utf-8") as fh:
            key = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --api-key-file {path}: {exc}") from None
    if not key:
        raise UserError(f"--api-key-file {path} is empty; put the key in it")
    return key
