"""The KServe v2 (Open Inference Protocol) routes: health, server and model metadata, and ``infer`` in the
JSON form and with the binary tensor extension (``Inference-Header-Content-Length``), as tritonclient sends."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from .. import __version__
from .errors import ApiError
from .inputs import read_body

VERSION = "1"
INPUT = "images"
OUTPUTS = ("logits", "probabilities")
HEADER_LENGTH = "inference-header-content-length"
MAX_IMAGES = 256  # images in one infer request
#: Largest JSON part of an infer request: parsing JSON numbers costs ~30 bytes of memory per byte of text, so
#: large tensors are to come as binary data (``Inference-Header-Content-Length``).
MAX_JSON_BYTES = 8 * 1024 * 1024

_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"],
           "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                          "datatype": {"type": "string", "enum": ["FP32", "UINT8"]},
                          "data": {"type": "array"}, "parameters": {"type": "object"}}}
INFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"],
    "properties": {"id": {"type": "string"}, "parameters": {"type": "object"},
                   "inputs": {"type": "array", "items": _TENSOR},
                   "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                       "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}}}}}


def v2_router(api: list[Any]) -> APIRouter:
    """The v2 routes; ``api`` are the dependencies of the routes that need the API key."""
    router = APIRouter(prefix="/v2", tags=["KServe v2"])

    @router.get("/health/live")
    async def live() -> dict[str, bool]:
        """200 while the server runs."""
        return {"live": True}

    @router.get("/health/ready")
    async def ready(request: Request) -> Response:
        """200 once the model is loaded and warmed up, 503 before."""
        ok = bool(request.app.state.ready)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @router.get("", dependencies=api)
    async def server_metadata() -> dict[str, Any]:
        """The server's name, version and protocol extensions."""
        return {"name": "resnets", "version": __version__, "extensions": ["binary_tensor_data"]}

    @router.get("/models/{name}", dependencies=api)
    async def model_metadata(request: Request, name: str) -> dict[str, Any]:
        """The model's inputs and outputs."""
        return _metadata(_engine(request, name, VERSION))

    @router.get("/models/{name}/versions/{version}", dependencies=api)
    async def version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
        """The model's inputs and outputs (its only version is 1)."""
        return _metadata(_engine(request, name, version))

    @router.get("/models/{name}/ready", dependencies=api)
    async def model_ready(request: Request, name: str) -> Response:
        """200 when the model is ready, 503 before."""
        return _ready(request, name, VERSION)

    @router.get("/models/{name}/versions/{version}/ready", dependencies=api)
    async def version_ready(request: Request, name: str, version: str) -> Response:
        """200 when the model (version 1) is ready, 503 before."""
        return _ready(request, name, version)

    @router.post("/models/{name}/infer", dependencies=api, openapi_extra=INFER_BODY)
    async def infer(request: Request, name: str) -> Response:
        """Logits (and probabilities, when asked) for a batch of images as an FP32 normalised tensor or a
        UINT8 0..255 RGB tensor, N x 3 x S x S."""
        return await _infer(request, name, VERSION)

    @router.post("/models/{name}/versions/{version}/infer", dependencies=api, openapi_extra=INFER_BODY)
    async def version_infer(request: Request, name: str, version: str) -> Response:
        """``infer`` on version 1, the only one."""
        return await _infer(request, name, version)

    return router


def _metadata(engine: Any) -> dict[str, Any]:
    size, classes = engine.loaded.input_size, len(engine.loaded.classes)
    return {"name": engine.loaded.name, "versions": [VERSION], "platform": "pytorch",
            "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, 3, size, size]}],
            "outputs": [{"name": out, "datatype": "FP32", "shape": [-1, classes]} for out in OUTPUTS]}


def _ready(request: Request, name: str, version: str) -> Response:
    _engine(request, name, version)
    ok = bool(request.app.state.ready)
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


async def _infer(request: Request, name: str, version: str) -> Response:
    engine = _engine(request, name, version)
    _check_content_type(request.headers.get("content-type"), request.headers.get(HEADER_LENGTH))
    state = request.app.state
    loop = asyncio.get_running_loop()
    with state.batcher.arriving() as arrival:  # a batch forming meanwhile waits for this tensor
        body = await read_body(request, state.settings.max_body_bytes)
        with state.decode_slots.held():  # JSON is parsed in the decode pool, off the event loop
            head, x, wanted = await loop.run_in_executor(state.decode_pool, _parse, body,
                                                         request.headers.get(HEADER_LENGTH), engine.loaded)
        logits = await state.batcher.submit("logits", x, arrival)
    return await loop.run_in_executor(state.decode_pool, _response, engine.loaded.name, head, logits, wanted)


def _parse(body: bytes, header_length: str | None, loaded: Any
           ) -> tuple[dict[str, Any], torch.Tensor, list[tuple[str, bool]]]:
    """The request's JSON header, its normalised input batch, and the outputs it asks for."""
    head, binary = _split(body, header_length)
    x = _input_tensor(head, binary, loaded.input_size, loaded.mean, loaded.std)
    return head, x, _outputs(head)


def _engine(request: Request, name: str, version: str) -> Any:
    engine = request.app.state.engine
    if engine is None:
        raise ApiError(503, "the model is still loading", {"Retry-After": "1"})
    if name != engine.loaded.name:
        raise ApiError(404, f"unknown model {name!r}; this server serves {engine.loaded.name!r}")
    if version != VERSION:
        raise ApiError(404, f"unknown version {version!r} of model {name!r}; the only version is {VERSION}")
    return engine


def _check_content_type(content_type: str | None, header_length: str | None) -> None:
    """415 unless the body is declared JSON, or JSON then binary tensors (``application/octet-stream`` with
    ``Inference-Header-Content-Length``); no Content-Type at all (as tritonclient sends) is taken as JSON."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media in ("", "application/json") or (media == "application/octet-stream" and header_length is not None):
        return
    raise ApiError(415, f"an infer request is JSON (Content-Type: application/json), or JSON then binary tensors "
                        f"(application/octet-stream with Inference-Header-Content-Length), not {_shown(media)}")


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header of an infer request and the binary tensor data after it."""
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise ApiError(400, f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 <= size <= len(body):
            raise ApiError(400, f"Inference-Header-Content-Length {size} is outside the body ({len(body)} bytes)")
    if size > MAX_JSON_BYTES:
        raise ApiError(413, f"the request's JSON is {size} bytes, over the limit of {MAX_JSON_BYTES}; send large "
                            "tensors as binary data (Inference-Header-Content-Length, binary_data_size)")
    try:
        text = body[:size].decode("utf-8")
    except UnicodeDecodeError:  # json.loads would guess UTF-16 or -32 from bytes: the protocol's JSON is UTF-8
        raise ApiError(415, "the request is not JSON text in UTF-8; send the infer request as JSON "
                            "(Content-Type: application/json)") from None
    try:
        head = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except ValueError:
        raise ApiError(400, "the request's JSON holds a number too long") from None
    except RecursionError:
        raise ApiError(400, "the request's JSON is nested too deeply") from None
    if not isinstance(head, dict):
        raise ApiError(400, "the request must be a JSON object with an 'inputs' list")
    return head, body[size:]


def _input_tensor(head: dict[str, Any], binary: bytes, size: int, mean: Any, std: Any) -> torch.Tensor:
    """The normalised N x 3 x S x S batch of the request's one input."""
    inputs = head.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f"'inputs' must be a list of one tensor, named {INPUT!r}")
    spec = inputs[0]
    if spec.get("name") != INPUT:
        raise ApiError(400, f"unknown input {_shown(spec.get('name'))}; the model's input is {INPUT!r}")
    datatype = spec.get("datatype")
    if datatype not in ("FP32", "UINT8"):
        raise ApiError(400, f"input datatype must be FP32 (normalised) or UINT8 (0..255 RGB), not {_shown(datatype)}")
    shape = spec.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(type(d) is int for d in shape)
            or not 1 <= shape[0] <= MAX_IMAGES or shape[1:] != [3, size, size]):
        raise ApiError(400, f"input shape must be [N, 3, {size}, {size}] with 1 <= N <= {MAX_IMAGES}, "
                            f"not {_shown(shape)}")
    count = math.prod(shape)
    dtype = np.dtype("<f4") if datatype == "FP32" else np.dtype(np.uint8)
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "input 'parameters' must be an object")
    if "binary_data_size" in params:
        nbytes = params["binary_data_size"]
        if type(nbytes) is not int or nbytes != count * dtype.itemsize or nbytes > len(binary):
            raise ApiError(400, f"binary_data_size {_shown(nbytes)} does not match shape {shape} of {datatype} "
                                f"({count * dtype.itemsize} bytes) or the {len(binary)} bytes sent")
        array = np.frombuffer(binary[:nbytes], dtype=dtype).astype(np.float32)
    else:
        array = _json_data(spec.get("data"), count, datatype)
    if not np.isfinite(array).all():
        raise ApiError(400, "input data holds NaN or infinite values")
    x = torch.from_numpy(array.reshape(shape).copy())
    if datatype == "UINT8":
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        x = (x / 255.0 - m) / s
    return x


def _json_data(data: Any, count: int, datatype: str) -> np.ndarray:
    """The flat float32 values of a JSON ``data`` field (flat or nested lists of numbers)."""
    if not isinstance(data, list):
        raise ApiError(400, "input 'data' must be a list of numbers (flat or nested), or send binary data")
    flat: list[Any] = []
    stack = [data]
    while stack:  # flatten without recursion, checking every leaf is a number
        for value in stack.pop():
            if isinstance(value, list):
                stack.append(value)
            elif type(value) in (int, float):
                flat.append(value)
            else:
                raise ApiError(400, f"input 'data' holds {type(value).__name__} {_shown(value)}; only numbers")
            if len(flat) > count:
                raise ApiError(400, f"input 'data' holds more than the {count} values its shape needs")
    array = _as_array(flat if _is_flat(data) else data)  # a nested list must be regular, as its shape
    if array.size != count:
        raise ApiError(400, f"input 'data' holds {array.size} values; its shape needs {count}")
    if datatype == "UINT8" and ((array < 0) | (array > 255) | (array != np.round(array))).any():
        raise ApiError(400, "UINT8 input data must be whole numbers from 0 to 255")
    return array.astype(np.float32).ravel()


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a client's value echoed in an error stays short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_flat(data: list[Any]) -> bool:
    return not any(isinstance(v, list) for v in data)


def _as_array(data: list[Any]) -> np.ndarray:
    try:
        return np.asarray(data, dtype=np.float64).ravel()
    except OverflowError:
        raise ApiError(400, "input 'data' holds a number too large") from None
    except (ValueError, TypeError):
        raise ApiError(400, "input 'data' is a ragged nested list; nest it as its shape or send it flat") from None


def _outputs(head: dict[str, Any]) -> list[tuple[str, bool]]:
    """``(name, binary)`` of each output asked for; by default the logits, binary when the request's
    ``binary_data_output`` parameter says so."""
    params = head.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "request 'parameters' must be an object")
    default_binary = params.get("binary_data_output") is True
    asked = head.get("outputs")
    if asked is None:
        return [("logits", default_binary)]
    if not isinstance(asked, list) or not asked:
        raise ApiError(400, "'outputs' must be a non-empty list of {\"name\": ...} objects")
    wanted = []
    for out in asked:
        if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
            shown = out.get("name") if isinstance(out, dict) else out
            raise ApiError(400, f"unknown output {_shown(shown)}; the outputs are {', '.join(OUTPUTS)}")
        out_params = out.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise ApiError(400, "output 'parameters' must be an object")
        wanted.append((out["name"], out_params.get("binary_data", default_binary) is True))
    return wanted


def _response(name: str, head: dict[str, Any], logits: torch.Tensor, wanted: list[tuple[str, bool]]) -> Response:
    values = {"logits": logits, "probabilities": torch.softmax(logits, dim=1)}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out, binary in wanted:
        tensor = values[out].float().contiguous()
        entry: dict[str, Any] = {"name": out, "datatype": "FP32", "shape": list(tensor.shape)}
        if binary:
            blob = tensor.numpy().astype("<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.flatten().tolist()
        outputs.append(entry)
    reply: dict[str, Any] = {"model_name": name, "model_version": VERSION, "outputs": outputs}
    if isinstance(head.get("id"), str):
        reply["id"] = head["id"]
    if not blobs:
        return JSONResponse(reply)
    text = json.dumps(reply).encode()
    return Response(text + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(text))})
