"""Prometheus metrics of the server: requests by route and status, latency, batch sizes, queue depth.

Each app gets its own registry. Under ``--workers N`` the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` so that
``/metrics``, whichever worker answers, reports all of them (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - re-exported
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        r = self.registry
        self.requests = Counter("resnets_requests", "HTTP requests by route, method and status",
                                ("route", "method", "status"), registry=r)
        self.latency = Histogram("resnets_request_seconds", "HTTP request latency by route", ("route",),
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("resnets_batch_size", "images per forward pass of the batcher",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("resnets_queue_depth", "requests waiting for the model", registry=r,
                                 multiprocess_mode="livesum")
        self.in_flight = Gauge("resnets_requests_in_flight", "HTTP requests being answered", registry=r,
                               multiprocess_mode="livesum")
        self.images = Counter("resnets_images", "images inferred, by route", ("route",), registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition (of every worker in multiprocess mode)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting each HTTP request by its route template and status, and timing it."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's, read at each request: those that leave no ``scope["route"]``

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        where = {"type": "http", "path": scope.get("path", ""), "root_path": scope.get("root_path", ""),
                 "method": scope.get("method", "")}  # as it comes: a mount changes the scope's root_path

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.in_flight.dec()
            template = getattr(scope.get("route"), "path", None) or self._template(where)
            self.metrics.requests.labels(template, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)

    def _template(self, where: Scope) -> str:
        """The path of the route or mount ``where`` goes to, for those that do not say it in the scope (FastAPI
        sets ``scope["route"]`` for its own routes only: not /openapi.json, /docs or a mount); else unmatched."""
        for route in self.routes:
            path = getattr(route, "path", None)
            if path and route.matches(where)[0] is Match.FULL:
                return str(path)
        return "unmatched"
