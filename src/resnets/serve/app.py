"""The FastAPI application of ``resnets serve``: the v1 JSON API, the KServe v2 routes, health, metrics and
the web page, with the model loaded (and warmed up) in the lifespan and dynamic batching behind it."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import importlib.util
import logging
import os
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import UserError
from ..infer.loading import LoadedModel
from .batcher import Batcher
from .decoding import decode_resized
from .engine import Engine
from .errors import ApiError
from .inputs import decode_all, read_uploads
from .kserve import v2_router
from .metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from .settings import SETTINGS_ENV, ServeSettings, read_api_key
from .slots import Slots

LOG = logging.getLogger("resnets.serve")

STATIC = Path(__file__).parent / "static"
#: Swagger UI's files for /docs come from this maintained package (swagger-ui-dist's bundle, no CDN); it has no
#: ReDoc, so there is no /redoc.
DOCS_ASSETS = "fastapi_swagger.resources"
_IMAGES = {"type": "array", "items": {"type": "string", "format": "binary"}}
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": _IMAGES}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text} for code, text in (
        (400, "undecodable image, over --max-pixels, or a bad parameter"), (401, "missing or wrong API key"),
        (413, "body over --max-body-mb"), (415, "unsupported content type"),
        (503, "a queue full (Retry-After) or model loading"), (504, "waited past --timeout-s"))}


def create_app(settings: ServeSettings, loaded: LoadedModel | Engine | None = None) -> FastAPI:
    """The app serving ``settings.weights`` (or the model already ``loaded``, or its engine already built); the
    model is loaded and the batcher started in the lifespan, and the model warmed up just after."""
    api_key = read_api_key(settings.api_key_file) if settings.api_key_file else None
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        if settings.threads:
            torch.set_num_threads(settings.threads)
        engine = loaded if isinstance(loaded, Engine) else await asyncio.to_thread(Engine, settings, loaded)
        state.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="resnets-decode")
        state.explain_pool = ThreadPoolExecutor(1, thread_name_prefix="resnets-explain")
        state.decode_slots = Slots(settings.max_decode_queue, "waiting to be decoded", "--max-decode-queue")
        state.explain_slots = Slots(settings.max_explain_queue, "waiting for Grad-CAM", "--max-explain-queue")
        state.batcher = Batcher({"logits": engine.logits, "embed": engine.embed}, max_batch=settings.max_batch,
                                max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                                timeout_s=settings.timeout_s, on_batch=metrics.batch_size.observe,
                                on_depth=metrics.queue_depth.set)
        state.engine = engine
        print(startup_line(engine, settings), file=sys.stderr, flush=True)
        warm = asyncio.create_task(_warm_up(app, engine))
        try:
            yield
        finally:
            state.ready = False
            await warm
            await asyncio.to_thread(state.batcher.close)  # in-flight requests finish first
            state.decode_pool.shutdown(wait=True)
            state.explain_pool.shutdown(wait=True)
            engine.close()
            if metrics.multiprocess:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())

    app = FastAPI(title="resnets", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="ResNet inference: top-k labels, embeddings, Grad-CAM, KServe v2.")
    state = app.state
    state.settings = settings
    state.metrics = metrics
    state.engine = None
    state.batcher = None
    state.ready = False
    app.add_middleware(InternalErrors)  # inside the metrics, which count its 500s
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.routes)
    _add_error_handlers(app)
    auth = [Depends(_key_check(api_key))]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """200 while the server runs."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "model not loaded and warmed up yet"}})
    async def readyz() -> Response:
        """200 once the model is loaded and warmed up with one batch, else 503."""
        ok = bool(state.ready)
        return JSONResponse({"status": "ready" if ok else "loading"}, status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=auth)
    async def metrics_text() -> Response:
        """Prometheus text: requests by route and status, latency, batch sizes, queue depth."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/model", dependencies=auth)
    async def model_info() -> dict[str, Any]:
        """The model served: name, classes, input size, normalisation, weights digest, backend."""
        return _engine(state).describe()

    @app.post("/v1/predict", dependencies=auth, openapi_extra=IMAGE_BODY, responses=ERRORS)
    async def predict(request: Request, topk: int = Query(5, ge=1, description="labels per image")
                      ) -> dict[str, Any]:
        """Top-``topk`` labels of each image sent, in order."""
        start = time.perf_counter()
        engine = _engine(state)
        with state.batcher.arriving() as arrival:  # a batch forming meanwhile waits for these images
            uploads = await read_uploads(request, settings.max_body_bytes)
            with state.decode_slots.held():
                batch = await decode_all(uploads, engine.loaded, settings.max_pixels, state.decode_pool)
            logits = await state.batcher.submit("logits", batch, arrival)
        metrics.images.labels("/v1/predict").inc(len(uploads))
        k = min(topk, len(engine.loaded.classes))
        values, indices = torch.softmax(logits, dim=1).topk(k, dim=1)
        classes = engine.loaded.classes
        predictions = [{"filename": name, "top": [{"label": classes[i], "index": i, "probability": v}
                                                  for v, i in zip(vals, idxs, strict=True)]}
                       for (name, _), vals, idxs in zip(uploads, values.tolist(), indices.tolist(), strict=True)]
        return {"model": engine.loaded.name, "time_ms": _ms(start), "predictions": predictions}

    @app.post("/v1/embed", dependencies=auth, openapi_extra=IMAGE_BODY, responses=ERRORS)
    async def embed(request: Request) -> dict[str, Any]:
        """The L2-normalised pooled features of each image sent, in order."""
        start = time.perf_counter()
        engine = _engine(state)
        with state.batcher.arriving() as arrival:
            uploads = await read_uploads(request, settings.max_body_bytes)
            with state.decode_slots.held():
                batch = await decode_all(uploads, engine.loaded, settings.max_pixels, state.decode_pool)
            vectors = await state.batcher.submit("embed", batch, arrival)
        metrics.images.labels("/v1/embed").inc(len(uploads))
        return {"model": engine.loaded.name, "time_ms": _ms(start), "dim": int(vectors.shape[1]),
                "embeddings": vectors.tolist()}

    @app.post("/v1/explain", dependencies=auth, openapi_extra=IMAGE_BODY,
              responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "the Grad-CAM overlay"}})
    async def explain(request: Request, class_: str | None = Query(
            None, alias="class", description="class to explain, a name or an index; default: the predicted one")
                      ) -> Response:
        """Grad-CAM of one image, drawn over it, as a PNG; the class explained in X-Class-Label/-Index."""
        from ..infer.explain import class_index

        engine = _engine(state)
        try:
            idx = None if class_ is None else class_index(engine.loaded.classes, class_)
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
        uploads = await read_uploads(request, settings.max_body_bytes)
        if len(uploads) != 1:
            raise ApiError(400, f"explain takes one image, not {len(uploads)}")
        loop = asyncio.get_running_loop()
        name, data = uploads[0]
        with state.decode_slots.held():
            image = await loop.run_in_executor(state.decode_pool, decode_resized, data, name,
                                               engine.loaded.resize, settings.max_pixels)
        state.explain_slots.take()  # 503 when --max-explain-queue explanations wait or run
        cancel = threading.Event()
        work = state.explain_pool.submit(engine.explain, image, idx, cancel)
        work.add_done_callback(state.explain_slots.release)  # once it has really stopped
        try:
            exp, png = await asyncio.wait_for(asyncio.wrap_future(work), settings.timeout_s)
        except TimeoutError:
            raise ApiError(504, f"the explanation took more than {settings.timeout_s:g} s (--timeout-s)") from None
        finally:
            if not work.done():  # timed out, or the request was cancelled
                cancel.set()  # stops it at the next layer it enters; one still queued never starts
        metrics.images.labels("/v1/explain").inc()
        return Response(png, media_type="image/png", headers={
            "X-Class-Label": _header_text(exp.class_name), "X-Class-Index": str(exp.class_index),
            "X-Class-Probability": f"{exp.probability:.6f}"})

    app.include_router(v2_router(auth))

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        """The web page."""
        index = STATIC / "index.html"
        if not index.is_file():
            raise ApiError(404, "the web page is not installed (resnets/serve/static/index.html is missing)")
        return FileResponse(index)

    assets = _docs_assets()

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        """Swagger UI on the OpenAPI document, its script and style served from /docs-static/."""
        if assets is None:
            raise ApiError(404, "the API docs need fastapi-swagger (Swagger UI's files): pip install 'resnets[serve]'")
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API docs",
            swagger_js_url=f"{root}/docs-static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-static/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-static/favicon-32x32.png")

    if assets is not None:
        app.mount("/docs-static", StaticFiles(directory=assets), name="docs-static")
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _docs_assets() -> Path | None:
    """The folder of Swagger UI's files that fastapi-swagger ships, or None when it is not installed."""
    if importlib.util.find_spec(DOCS_ASSETS.partition(".")[0]) is None:
        return None
    folder = Path(str(importlib.resources.files(DOCS_ASSETS)))
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def app_from_env() -> FastAPI:
    """The app for a ``--workers`` process: settings from ``$RESNETS_SERVE_SETTINGS`` (an app factory)."""
    settings = ServeSettings.from_json(os.environ[SETTINGS_ENV])
    return create_app(settings)


def startup_line(engine: Engine, settings: ServeSettings) -> str:
    """The line printed once the model is loaded."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    workers = f", {settings.workers} workers" if settings.workers > 1 else ""
    return (f"serving {engine.loaded.name} (weights sha256 {engine.sha256[:16]}) on http://{host}:{settings.port} "
            f"(backend {engine.backend}, {engine.precision}, max batch {settings.max_batch}{workers})")


async def _warm_up(app: FastAPI, engine: Engine) -> None:
    await asyncio.to_thread(engine.warm_up)
    app.state.ready = True


def _engine(state: Any) -> Engine:
    if state.engine is None:
        raise ApiError(503, "the model is still loading; retry shortly", {"Retry-After": "1"})
    return state.engine


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def _header_text(text: str) -> str:
    """``text`` as an HTTP header value: as is when printable ASCII, else percent-encoded UTF-8."""
    return text if text.isascii() and text.isprintable() else urllib.parse.quote(text, safe="")


def _key_check(api_key: str | None) -> Any:
    """A dependency refusing requests without ``Authorization: Bearer <api_key>`` (none when no key)."""
    expected = api_key.encode() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": "Bearer"})

    return check


def _error(request: Request, status: int, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error body: ``{"detail": text}``, or ``{"error": text}`` on the KServe v2 routes."""
    return _error_at(request.url.path, status, text, headers)


def _error_at(path: str, status: int, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    key = "error" if path.startswith("/v2") else "detail"
    return JSONResponse({key: text}, status_code=status, headers=headers)


def internal_error(method: str, path: str, exc: BaseException) -> JSONResponse:
    """A 500 that says only where to look: the exception's text goes to the server's log with a reference,
    never to the client (it can hold paths, library internals, other requests' data)."""
    reference = uuid.uuid4().hex[:12]
    LOG.error("internal error %s on %s %s", reference, method, path, exc_info=exc)
    return _error_at(path, 500, f"internal error (reference {reference}); the server's log has the details")


class InternalErrors:
    """ASGI middleware answering an unexpected exception with :func:`internal_error`, as a normal response:
    Starlette's own handler for ``Exception`` raises it again after answering, and uvicorn then closes the
    keep-alive connection under the client's next request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:  # too late for another answer
                raise
            await internal_error(scope.get("method", ""), scope.get("path", ""), exc)(scope, receive, send)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(request, exc.status, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = " ".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
        status = 400 if request.url.path.startswith("/v2") else 422
        return _error(request, status, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:  # outside InternalErrors: middleware
        return internal_error(request.method, request.url.path, exc)
