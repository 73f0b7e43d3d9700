"""resnets serve: every route and error of the HTTP API against real uvicorn servers on loopback ports (in this
process for most tests, as ``resnets serve`` subprocesses for SIGTERM, --workers and the CLI), the KServe v2
routes through tritonclient's HTTP client, dynamic batching, and agreement with ``resnets.infer.predict``."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image, ImageFile

from resnets import create_model
from resnets.cli import main
from resnets.data import extract_sample
from resnets.infer import predict
from resnets.serve import ServeSettings, create_app
from resnets.weights import save_weights

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
BODY_LIMIT_MB = 0.25  # the main test server's --max-body-mb
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init resnet20 with CIFAR-10 names and normalisation, saved with its metadata."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    path = tmp_path_factory.mktemp("serve") / "r20.safetensors"
    save_weights(model, path, classes=CIFAR_CLASSES, normalization={"mean": MEAN, "std": STD})
    return path


@pytest.fixture(scope="module")
def images() -> list[Path]:
    """Eight shipped sample test images, from four classes."""
    root = extract_sample() / "test"
    return [p for cls in ("airplane", "bird", "cat", "ship") for p in sorted((root / cls).iterdir())[:2]]


class LiveServer:
    """A real uvicorn server running ``create_app(settings)`` in a thread, on an ephemeral loopback port."""

    def __init__(self, settings: ServeSettings) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        settings.port = sock.getsockname()[1]
        self.settings = settings
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{settings.port}"
        wait_ready(self.url)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_ready(url: str, *, timeout: float = 90, proc: subprocess.Popen[str] | None = None,
               headers: dict[str, str] | None = None) -> None:
    """Poll ``url``/readyz until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2, headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s")


def settings_for(weights: Path, **options: Any) -> ServeSettings:
    return ServeSettings(weights=str(weights), precision="fp32", threads=1, **options)


@pytest.fixture(scope="module")
def server(weights: Path) -> Iterator[LiveServer]:
    """The main test server: fp32, a small body limit, and a batch window wide enough to batch together
    requests sent at once."""
    live = LiveServer(settings_for(weights, max_body_mb=BODY_LIMIT_MB, max_wait_ms=100, max_batch=32))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def form(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``file`` fields for ``paths``."""
    return [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width`` x ``height`` pixels (a decompression bomb if it were decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` in Prometheus text (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------------------------------- the v1 API


def test_health_ready_and_model(client: httpx.Client, weights: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    info = client.get("/v1/model").json()
    assert info["name"] == "resnet20" and info["classes"] == CIFAR_CLASSES and info["num_classes"] == 10
    assert info["input_size"] == 32 and info["normalization"] == {"mean": MEAN, "std": STD}
    assert info["parameters"] == sum(p.numel() for p in create_model("resnet20").parameters())
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["weights_file"] == "r20.safetensors"
    assert (info["backend"], info["precision"], info["variant"]) == ("torch", "fp32", "v1")


def test_predict_matches_resnets_predict(client: httpx.Client, weights: Path, images: list[Path]) -> None:
    reply = client.post("/v1/predict", params={"topk": 3}, files=form(*images))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "resnet20" and body["time_ms"] > 0
    expected = predict(weights, [str(p) for p in images], topk=3, precision="fp32", progress=False).predictions
    assert [p["filename"] for p in body["predictions"]] == [p.name for p in images]
    for got, want in zip(body["predictions"], expected, strict=True):
        assert [t["label"] for t in got["top"]] == [n for n, _, _ in want.labels]
        assert [t["index"] for t in got["top"]] == [i for _, i, _ in want.labels]
        assert np.allclose([t["probability"] for t in got["top"]], [v for _, _, v in want.labels], atol=1e-4)


def test_predict_raw_body_and_topk(client: httpx.Client, images: list[Path]) -> None:
    reply = client.post("/v1/predict", content=images[0].read_bytes(), headers={"content-type": "image/jpeg"})
    assert reply.status_code == 200
    (only,) = reply.json()["predictions"]
    assert only["filename"] is None and len(only["top"]) == 5
    everything = client.post("/v1/predict?topk=50", files=form(images[0])).json()["predictions"][0]["top"]
    assert len(everything) == 10 and abs(sum(t["probability"] for t in everything) - 1) < 1e-4
    for bad in ("0", "-1", "x", "1.5"):
        reply = client.post(f"/v1/predict?topk={bad}", files=form(images[0]))
        assert reply.status_code == 422 and "topk" in reply.json()["detail"]


def test_embed(client: httpx.Client, weights: Path, images: list[Path]) -> None:
    from resnets.infer import embed

    reply = client.post("/v1/embed", files=form(*images[:3]))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    vectors = np.array(body["embeddings"])
    assert body["model"] == "resnet20" and body["dim"] == 64 and vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    want = embed(weights, [str(p) for p in images[:3]], precision="fp32", progress=False).vectors
    assert np.allclose(vectors, want, atol=1e-4)


def test_explain(client: httpx.Client, images: list[Path]) -> None:
    reply = client.post("/v1/explain", files=form(images[0]))
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    assert reply.content.startswith(b"\x89PNG") and int(reply.headers["x-class-index"]) in range(10)
    assert reply.headers["x-class-label"] == CIFAR_CLASSES[int(reply.headers["x-class-index"])]
    assert Image.open(io.BytesIO(reply.content)).size[0] > 100
    for chosen in ("ship", "Ship", "8"):
        reply = client.post("/v1/explain", params={"class": chosen}, content=images[1].read_bytes(),
                            headers={"content-type": "image/jpeg"})
        assert reply.status_code == 200 and reply.headers["x-class-label"] == "ship"
        assert reply.headers["x-class-index"] == "8"
    unknown = client.post("/v1/explain", params={"class": "spaceship"}, files=form(images[0]))
    assert unknown.status_code == 400 and "spaceship" in unknown.json()["detail"]
    assert client.post("/v1/explain", params={"class": "10"}, files=form(images[0])).status_code == 400
    two = client.post("/v1/explain", files=form(images[0], images[1]))
    assert two.status_code == 400 and "one image" in two.json()["detail"]


def test_page_and_static_assets(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert client.get("/static/nothing.js").status_code == 404


def test_openapi_document(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/predict", "/v1/embed", "/v1/explain", "/v1/model", "/healthz", "/readyz",
                 "/v2/models/{name}/infer"):
        assert path in paths
    assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]


# --------------------------------------------------------------------------------------------- errors


def test_unsupported_content_type_and_no_image(client: httpx.Client) -> None:
    reply = client.post("/v1/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert reply.status_code == 415 and "text/plain" in reply.json()["detail"]
    assert client.post("/v1/predict", content=b"hello").status_code == 415  # no content type at all
    empty = client.post("/v1/predict", files=[("other", ("a.jpg", b"x", "image/jpeg"))])
    assert empty.status_code == 400 and "'file'" in empty.json()["detail"]
    text = client.post("/v1/predict", data={"file": "not a file"}, files=[("x", ("a", b"1", "text/plain"))])
    assert text.status_code == 400


def test_truncated_and_undecodable_images(client: httpx.Client, images: list[Path]) -> None:
    jpeg = images[0].read_bytes()
    reply = client.post("/v1/predict", files=[("file", ("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"))])
    assert reply.status_code == 400
    assert "cut.jpg" in reply.json()["detail"] and "truncated" in reply.json()["detail"].lower()
    junk = client.post("/v1/predict", content=b"not an image at all", headers={"content-type": "image/png"})
    assert junk.status_code == 400 and "identify" in junk.json()["detail"]
    empty = client.post("/v1/embed", content=b"", headers={"content-type": "image/png"})
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]


@pytest.mark.parametrize("side", [9000, 20000])
def test_pixel_bomb_refused_without_decoding(client: httpx.Client, side: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loads.append(im) or real_load(im))
    bomb = png_header(side, side)
    assert len(bomb) < 200
    reply = client.post("/v1/predict", files=[("file", ("bomb.png", bomb, "image/png"))])
    assert reply.status_code == 400
    detail = reply.json()["detail"]
    assert "bomb" in detail and "pixels" in detail and "--max-pixels" in detail
    assert loads == []  # refused on the header: no pixel was decoded (its memory: tests/test_serve_memory.py)


def test_body_over_limit_by_content_length(client: httpx.Client) -> None:
    big = b"\0" * int(BODY_LIMIT_MB * 1048576 + 10)
    reply = client.post("/v1/predict", content=big, headers={"content-type": "image/png"})
    assert reply.status_code == 413 and "--max-body-mb" in reply.json()["detail"]
    reply = client.post("/v1/predict", files=[("file", ("big.png", big, "image/png"))])
    assert reply.status_code == 413


def test_body_over_limit_chunked(server: LiveServer) -> None:
    """A chunked body (no Content-Length) is counted as it arrives and refused once over the limit."""
    chunk = b"\0" * 16384
    with socket.create_connection(("127.0.0.1", server.settings.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sent = 0
        try:
            while sent < BODY_LIMIT_MB * 1048576 * 4:  # the server answers before this much is sent
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except OSError:
            pass
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    with server.client() as c:  # and the server is fine
        assert c.get("/healthz").status_code == 200


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/predict").status_code == 405
    assert "detail" in client.get("/v1/nothing").json()


def test_not_ready_before_startup(weights: Path) -> None:
    from fastapi.testclient import TestClient

    app = create_app(settings_for(weights))
    c = TestClient(app)  # no lifespan: the model is not loaded
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 503 and c.get("/v2/health/ready").status_code == 503
    reply = c.post("/v1/predict", content=b"x", headers={"content-type": "image/png"})
    assert reply.status_code == 503 and "Retry-After" in reply.headers


def slowed(live: LiveServer, seconds: float) -> None:
    """Make each batch of ``live``'s logits take ``seconds`` longer."""
    real = live.app.state.batcher.functions["logits"]

    def slow(x: torch.Tensor) -> torch.Tensor:
        time.sleep(seconds)
        return real(x)

    live.app.state.batcher.functions["logits"] = slow


def test_queue_full_503_and_timeout_504(weights: Path, images: list[Path]) -> None:
    live = LiveServer(settings_for(weights, max_batch=1, max_wait_ms=0, max_queue=1, timeout_s=0.6))
    try:
        slowed(live, 2.0)
        body = images[0].read_bytes()

        def send() -> httpx.Response:
            with live.client() as c:
                return c.post("/v1/predict", content=body, headers={"content-type": "image/jpeg"})

        with ThreadPoolExecutor(2) as pool, live.client() as watcher:
            running = pool.submit(send)  # taken by the model at once: runs 2 s
            time.sleep(0.2)
            queued = pool.submit(send)  # waits in the queue (depth 1 = --max-queue)
            deadline = time.monotonic() + 10
            while metric(watcher.get("/metrics").text, "resnets_queue_depth") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            refused = send()
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "busy" in refused.json()["detail"]
            for late in (running.result(), queued.result()):
                assert late.status_code == 504 and "--timeout-s" in late.json()["detail"]
        with live.client() as c:
            text = c.get("/metrics").text
        assert metric(text, "resnets_requests_total", route="/v1/predict", status="503") == 1
        assert metric(text, "resnets_requests_total", route="/v1/predict", status="504") == 2
    finally:
        live.stop()


# ------------------------------------------------------------------------------------ batching, metrics


def test_concurrent_requests_are_batched(server: LiveServer, images: list[Path]) -> None:
    with server.client() as c:
        before = c.get("/metrics").text
    payloads = [images[i % len(images)].read_bytes() for i in range(16)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as ac:
            return await asyncio.gather(*(ac.post("/v1/predict", content=p, headers={"content-type": "image/jpeg"})
                                          for p in payloads))

    replies = asyncio.run(burst())
    assert [r.status_code for r in replies] == [200] * 16
    solo = {}
    with server.client() as c:
        for p in images:
            solo[p.read_bytes()] = c.post("/v1/predict", content=p.read_bytes(),
                                          headers={"content-type": "image/jpeg"}).json()["predictions"][0]["top"]
        after = c.get("/metrics").text
    for payload, reply in zip(payloads, replies, strict=True):  # each answer is its own image's
        got = reply.json()["predictions"][0]["top"]
        assert [t["index"] for t in got] == [t["index"] for t in solo[payload]]
    batches = metric(after, "resnets_batch_size_count") - metric(before, "resnets_batch_size_count")
    images_run = metric(after, "resnets_batch_size_sum") - metric(before, "resnets_batch_size_sum")
    assert images_run == 16 + len(images)
    assert batches < images_run, "no batch held more than one image"
    singles = (metric(after, "resnets_batch_size_bucket", le="1.0")
               - metric(before, "resnets_batch_size_bucket", le="1.0"))
    assert singles < batches, "every batch held one image"


def test_metrics_text(client: httpx.Client) -> None:
    client.get("/healthz")
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    for name in ("resnets_requests_total", "resnets_request_seconds_bucket", "resnets_batch_size_bucket",
                 "resnets_queue_depth"):
        assert name in text
    assert metric(text, "resnets_requests_total", route="/healthz", status="200") >= 1
    assert metric(text, "resnets_request_seconds_count", route="/v1/predict") >= 1


# ------------------------------------------------------------------------------------------- KServe v2


def test_v2_with_tritonclient(server: LiveServer, weights: Path, images: list[Path]) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    from resnets.data import read_rgb
    from resnets.infer.loading import load_for_inference

    loaded = load_for_inference(weights)
    x = torch.stack([loaded.preprocess(read_rgb(p)) for p in images[:3]]).numpy()
    want = predict(weights, [str(p) for p in images[:3]], topk=10, precision="fp32", progress=False)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.settings.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("resnet20")
    meta = client.get_model_metadata("resnet20")
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert meta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}
    assert client.get_server_metadata()["name"] == "resnets"
    for binary in (False, True):
        tensor = triton.InferInput("images", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [triton.InferRequestedOutput("logits", binary_data=binary),
                   triton.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer("resnet20", [tensor], outputs=outputs)
        probs = result.as_numpy("probabilities")
        assert result.as_numpy("logits").shape == (3, 10) and probs.shape == (3, 10)
        for row, p in zip(probs, want.predictions, strict=True):
            assert np.allclose([row[i] for _, i, _ in p.labels], [v for _, _, v in p.labels], atol=1e-4)
    plain = triton.InferInput("images", list(x.shape), "FP32")
    plain.set_data_from_numpy(x)
    default = client.infer("resnet20", [plain])  # no outputs named: tritonclient asks for binary logits
    assert np.allclose(default.as_numpy("logits"), result.as_numpy("logits"), atol=1e-4)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("resnet50")
    wrong = triton.InferInput("images", [1, 3, 16, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32), binary_data=False)
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("resnet20", [wrong])
    client.close()


def test_v2_json_uint8_and_errors(client: httpx.Client, weights: Path, images: list[Path]) -> None:
    from resnets.data import read_rgb

    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    raw = torch.stack([read_rgb(p) for p in images[:2]])  # the sample images are 32 x 32
    assert raw.shape == (2, 3, 32, 32)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    normalised = (raw.float() / 255 - m) / s

    def infer(tensor: dict[str, Any], **extra: Any) -> httpx.Response:
        return client.post("/v2/models/resnet20/infer", json={"id": "r1", "inputs": [tensor], **extra})

    as_uint8 = infer({"name": "images", "shape": [2, 3, 32, 32], "datatype": "UINT8", "data": raw.tolist()},
                     outputs=[{"name": "logits"}, {"name": "probabilities"}])
    assert as_uint8.status_code == 200, as_uint8.text
    body = as_uint8.json()
    assert body["model_name"] == "resnet20" and body["id"] == "r1"
    assert [o["name"] for o in body["outputs"]] == ["logits", "probabilities"]
    assert body["outputs"][0]["shape"] == [2, 10] and body["outputs"][0]["datatype"] == "FP32"
    as_fp32 = infer({"name": "images", "shape": [2, 3, 32, 32], "datatype": "FP32",
                     "data": normalised.flatten().tolist()})
    assert [o["name"] for o in as_fp32.json()["outputs"]] == ["logits"]
    assert np.allclose(as_fp32.json()["outputs"][0]["data"], body["outputs"][0]["data"], atol=1e-4)

    assert client.get("/v2/models/resnet50").status_code == 404
    missing = client.post("/v2/models/resnet50/infer", json={"inputs": []})
    assert missing.status_code == 404 and "resnet50" in missing.json()["error"]
    for tensor, words in (
        ({"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP64", "data": [0.0] * 3072}, "datatype"),
        ({"name": "images", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}, "shape"),
        ({"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 10}, "values"),
        ({"name": "pixels", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}, "input"),
        ({"name": "images", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": [300] * 3072}, "0 to 255"),
        ({"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": ["a"] * 3072}, "numbers"),
    ):
        reply = infer(tensor)
        assert reply.status_code == 400 and words in reply.json()["error"], (tensor["datatype"], reply.text)
    bad_json = client.post("/v2/models/resnet20/infer", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
    unknown_output = infer({"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072},
                           outputs=[{"name": "features"}])
    assert unknown_output.status_code == 400 and "features" in unknown_output.json()["error"]


# ----------------------------------------------------------------------------------------------- auth


def test_api_key(weights: Path, images: list[Path], tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    live = LiveServer(settings_for(weights, api_key_file=str(key_file)))
    try:
        with live.client() as c:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-key"}):
                for method, path in (("GET", "/v1/model"), ("POST", "/v1/predict"), ("GET", "/metrics"),
                                     ("GET", "/v2/models/resnet20"), ("POST", "/v2/models/resnet20/infer")):
                    reply = c.request(method, path, headers=headers)
                    assert reply.status_code == 401, (path, headers)
                    assert reply.headers["www-authenticate"] == "Bearer"
            assert "API key" in c.get("/v1/model").json()["detail"]
            assert "API key" in c.get("/v2/models/resnet20").json()["error"]
            for open_path in ("/healthz", "/readyz", "/", "/static/app.js", "/v2/health/ready"):
                assert c.get(open_path).status_code == 200, open_path
            good = {"Authorization": "Bearer s3cret-key"}
            assert c.get("/v1/model", headers=good).status_code == 200
            assert c.post("/v1/predict", files=form(images[0]), headers=good).status_code == 200
    finally:
        live.stop()


# ------------------------------------------------------------------------------ the command line, processes


def test_cli_refuses_open_host_without_key(weights: Path, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    assert main(["serve", "--weights", str(weights), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--api-key-file" in err and "--no-auth" in err
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    assert main(["serve", "--weights", str(weights), "--host", "0.0.0.0", "--api-key-file", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["serve", "--weights", str(tmp_path / "none.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["serve", "--weights", str(weights), "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err


def test_settings_allow_open_host_only_with_key_or_no_auth(weights: Path, tmp_path: Path) -> None:
    from resnets import UserError

    key = tmp_path / "key"
    key.write_text("k\n")
    for host in ("127.0.0.1", "localhost", "::1"):
        settings_for(weights, host=host).check()
    settings_for(weights, host="0.0.0.0", no_auth=True).check()
    settings_for(weights, host="10.1.2.3", api_key_file=str(key)).check()
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        with pytest.raises(UserError, match="--api-key-file"):
            settings_for(weights, host=host).check()
    with pytest.raises(UserError, match="not both"):
        settings_for(weights, api_key_file=str(key), no_auth=True).check()


def test_cli_names_the_extra_when_fastapi_is_missing(weights: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve", "--weights", str(weights)]) == 2
    assert "pip install 'resnets[serve]'" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cli(weights: Path, *options: str) -> tuple[subprocess.Popen[str], str]:
    """``resnets serve`` in a subprocess on a free port, once ready."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "resnets", "serve", "--weights", str(weights), "--port",
                             str(port), "--precision", "fp32", "--threads", "1", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


def test_sigterm_finishes_requests_in_flight(weights: Path, images: list[Path]) -> None:
    """SIGTERM while eight requests wait in a wide batch window: all eight get 200, then the process exits 0."""
    proc, url = start_cli(weights, "--max-wait-ms", "3000", "--max-batch", "64")
    try:
        body = images[0].read_bytes()

        def send() -> httpx.Response:
            return httpx.post(f"{url}/v1/predict", content=body, headers={"content-type": "image/jpeg"}, timeout=60)

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send) for _ in range(8)]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until all eight wait in the batcher
                text = httpx.get(f"{url}/metrics", timeout=5).text
                if metric(text, "resnets_requests_in_flight") >= 9:  # eight, and this one
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            replies = [f.result() for f in futures]
        assert [r.status_code for r in replies] == [200] * 8
        assert proc.wait(30) == 0
        err = proc.stderr.read() if proc.stderr else ""
        assert "serving resnet20 (weights sha256 " in err and "backend torch, fp32, max batch 64" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers(weights: Path, images: list[Path]) -> None:
    proc, url = start_cli(weights, "--workers", "2")
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(4):
                reply = c.post("/v1/predict", files=form(images[0]))
                assert reply.status_code == 200 and reply.json()["model"] == "resnet20"
            text = c.get("/metrics").text  # either worker answers for both
            assert metric(text, "resnets_requests_total", route="/v1/predict", status="200") == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_onnx_backend(weights: Path, images: list[Path]) -> None:
    """--backend onnx: onnxruntime on an export made at startup answers as the torch path does."""
    live = LiveServer(settings_for(weights, backend="onnx", max_wait_ms=0))
    try:
        with live.client() as c:
            info = c.get("/v1/model").json()
            assert (info["backend"], info["precision"]) == ("onnx", "fp32")
            body = c.post("/v1/predict", params={"topk": 3}, files=form(*images[:4])).json()
            assert c.post("/v1/embed", files=form(images[0])).json()["dim"] == 64
    finally:
        live.stop()
    expected = predict(weights, [str(p) for p in images[:4]], topk=3, precision="fp32", progress=False)
    for got, want in zip(body["predictions"], expected.predictions, strict=True):
        assert [t["index"] for t in got["top"]] == [i for _, i, _ in want.labels]
        assert np.allclose([t["probability"] for t in got["top"]], [v for _, _, v in want.labels], atol=1e-4)


def test_connections_to_the_bound_socket_send_without_delay() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it every response on a keep-alive
    connection waited ~40 ms for the client's delayed ACK (p50 60 ms for a 10 ms request)."""
    import asyncio
    import socket

    from resnets.serve.runner import bind

    async def nodelay_of_an_accepted_connection() -> int:
        seen: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = bind("127.0.0.1", 0)
        server = await asyncio.start_server(handle, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        while not seen:
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        return seen[0]

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0
