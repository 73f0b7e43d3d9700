"""``resnets serve``: an HTTP inference service (FastAPI + uvicorn) with dynamic batching, KServe v2 routes,
Prometheus metrics and a web page. See docs/serve.md."""

from __future__ import annotations

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> object:
    if name == "create_app":  # FastAPI is imported only when the app is made
        from .app import create_app

        return create_app
    raise AttributeError(name)
