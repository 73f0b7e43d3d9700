"""Run the app under uvicorn: one process, or ``--workers`` processes sharing one socket (each loads its own
model), with graceful shutdown on SIGTERM/SIGINT (in-flight requests finish, the batcher drains)."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator

import uvicorn

from ..errors import UserError
from .settings import SETTINGS_ENV, ServeSettings


class GracefulServer(uvicorn.Server):
    """uvicorn's Server, except that a SIGTERM/SIGINT ends in a clean exit once shutdown is done, instead of
    being raised again at the process (which would make the exit status the signal's)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); UserError when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it a
    # keep-alive connection's responses wait ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def log_config() -> dict[str, object]:
    """uvicorn's logging configuration, with the ``resnets`` loggers (internal errors, refused images) written
    as uvicorn's own lines are."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["resnets"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean shutdown, 1 when the app failed to start."""
    sock = bind(settings.host, settings.port)
    settings.port = sock.getsockname()[1]
    options = {"host": settings.host, "port": settings.port, "log_level": "info", "lifespan": "on",
               "log_config": log_config(),
               "timeout_graceful_shutdown": settings.timeout_s + 10}  # requests in flight end within --timeout-s
    if settings.workers == 1:
        from .app import create_app
        from .engine import Engine

        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        engine = Engine(settings)  # load errors are one-line UserErrors here, before the server starts
        server = GracefulServer(uvicorn.Config(create_app(settings, engine), **options))
        server.run(sockets=[sock])
        return 0 if server.started else 1
    from ..infer.loading import load_for_inference

    load_for_inference(settings.weights, settings.model, variant=settings.variant)  # fail early, once
    from uvicorn.supervisors import Multiprocess

    with tempfile.TemporaryDirectory(prefix="resnets-metrics-") as metrics_dir:
        os.environ[SETTINGS_ENV] = settings.to_json()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        # a worker importing torch on a busy machine can miss uvicorn's default 5 s health check and be
        # killed and restarted over and over; give it time
        config = uvicorn.Config("resnets.serve.app:app_from_env", factory=True, workers=settings.workers,
                                timeout_worker_healthcheck=120, **options)
        Multiprocess(config, sockets=[sock]).run()  # SIGTERM: each worker shuts down gracefully
    return 0
