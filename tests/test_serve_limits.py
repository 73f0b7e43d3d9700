"""resnets serve's limits on live servers on loopback: --max-pixels; photos decoded at reduced size answer as
``resnets predict`` does; the decode and Grad-CAM queues answer 503 with Retry-After when full; a timed-out
Grad-CAM stops; KServe JSON is parsed off the event loop under a size bound; an answer never carries an
exception's text. Memory itself: tests/test_serve_memory.py."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from resnets.cli import main
from resnets.infer import predict
from test_serve import LiveServer, client, form, images, server, settings_for, weights  # noqa: F401

PHOTO_SIZE = (3000, 3516)  # the sample photo enlarged: decoded at 1/8 (JPEG) or box-reduced (PNG) for 32 x 37


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A real photo (matplotlib's sample of Grace Hopper, 512 x 600) as it is, enlarged as JPEG and PNG, and
    enlarged stored sideways with EXIF orientation 6 (a phone's portrait photo)."""
    import matplotlib.cbook

    root = tmp_path_factory.mktemp("photos")
    source = root / "hopper.jpg"
    source.write_bytes(Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes())
    big = Image.open(source).convert("RGB").resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
    big.save(root / "hopper-big.jpg", quality=90)
    big.save(root / "hopper-big.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    big.transpose(Image.Transpose.ROTATE_90).save(root / "hopper-sideways.jpg", quality=90, exif=exif)
    return [source, root / "hopper-big.jpg", root / "hopper-big.png", root / "hopper-sideways.jpg"]


@pytest.fixture(scope="module")
def roomy(weights: Path) -> Iterator[LiveServer]:  # noqa: F811 - the fixture imported above
    """A server with the default body limit (the main test server's is 0.25 MB)."""
    live = LiveServer(settings_for(weights, max_wait_ms=0))
    yield live
    live.stop()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.01)


# --------------------------------------------------------------------------- reduced-size decoding, pixels


def test_photos_decoded_at_reduced_size_answer_as_resnets_predict(roomy: LiveServer, weights: Path,  # noqa: F811
                                                                   photos: list[Path]) -> None:
    from resnets.serve.decoding import decode_resized

    for path in photos[1:]:  # decoded at reduced size, to the shape predict's resize gives (portrait: 37 x 32)
        assert tuple(decode_resized(path.read_bytes(), path.name, 32, 25_000_000).shape) == (3, 37, 32)
    with roomy.client() as c:
        body = c.post("/v1/predict", params={"topk": 10}, files=form(*photos))
        assert body.status_code == 200, body.text
        explained = c.post("/v1/explain", files=form(photos[3]))
    want = predict(weights, [str(p) for p in photos], topk=10, precision="fp32", progress=False).predictions
    for got, expected in zip(body.json()["predictions"], want, strict=True):
        assert got["top"][0]["index"] == expected.labels[0][1], got["filename"]
        probs = {t["index"]: t["probability"] for t in got["top"]}
        assert np.allclose([probs[i] for _, i, _ in expected.labels], [v for _, _, v in expected.labels],
                           atol=2e-3), got["filename"]
    assert explained.status_code == 200 and explained.headers["content-type"] == "image/png"
    assert int(explained.headers["x-class-index"]) == want[3].labels[0][1]


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_max_pixels_is_the_servers_own_limit(weights: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    live = LiveServer(settings_for(weights, max_pixels=20_000))
    try:
        with live.client() as c:
            def send(size: tuple[int, int]) -> httpx.Response:
                return c.post("/v1/predict", content=png(size), headers={"content-type": "image/png"})

            assert send((200, 100)).status_code == 200  # 20 000 pixels: at the limit
            over = send((201, 100))
            assert over.status_code == 400
            assert all(w in over.json()["detail"] for w in ("201x100", "20000", "--max-pixels"))
            sliver = send((9000, 2))  # 18 000 pixels, but 144 000 x 32 once its short side is scaled to 32
            assert sliver.status_code == 400 and "once its shorter side" in sliver.json()["detail"]
    finally:
        live.stop()
    for flag in ("--max-pixels", "--max-decode-queue", "--max-explain-queue"):
        assert main(["serve", "--weights", str(weights), flag, "0"]) == 2
        assert f"{flag} must be at least 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- bounded queues


def test_decode_queue_full_answers_503(weights: Path, images: list[Path],  # noqa: F811
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import resnets.serve.inputs as inputs

    real = inputs.decode_resized
    go = threading.Event()

    def held(*args: Any, **kwargs: Any) -> torch.Tensor:
        go.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(inputs, "decode_resized", held)
    live = LiveServer(settings_for(weights, max_decode_queue=1, max_wait_ms=0))
    slots = live.app.state.decode_slots
    try:
        with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=live.url, timeout=10) as c:
            first = pool.submit(c.post, "/v1/predict", files=form(images[0]))
            wait_until(lambda: slots.used == 1, "decoding the first request")
            for path, kwargs in (("/v1/predict", {"files": form(images[1])}),
                                 ("/v1/explain", {"files": form(images[1])}),
                                 ("/v2/models/resnet20/infer", {"json": {"inputs": []}})):
                refused = c.post(path, **kwargs)
                assert refused.status_code == 503, (path, refused.text)
                assert refused.headers["retry-after"] == "1"
                text = refused.json().get("detail") or refused.json()["error"]
                assert "busy" in text and "--max-decode-queue" in text
            go.set()
            assert first.result().status_code == 200
            assert slots.used == 0
            assert c.post("/v1/predict", files=form(images[1])).status_code == 200
    finally:
        go.set()
        live.stop()


def test_explain_queue_full_answers_503(weights: Path, images: list[Path],  # noqa: F811
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    live = LiveServer(settings_for(weights, max_explain_queue=1, max_wait_ms=0))
    engine = live.app.state.engine
    real = engine.explain
    go = threading.Event()

    def held(*args: Any) -> Any:
        go.wait(30)
        return real(*args)

    monkeypatch.setattr(engine, "explain", held)
    slots = live.app.state.explain_slots
    try:
        with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=live.url, timeout=10) as c:
            first = pool.submit(c.post, "/v1/explain", files=form(images[0]))
            wait_until(lambda: slots.used == 1, "explaining the first request")
            refused = c.post("/v1/explain", files=form(images[1]))
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "--max-explain-queue" in refused.json()["detail"]
            assert c.post("/v1/predict", files=form(images[1])).status_code == 200  # only Grad-CAM is full
            go.set()
            assert first.result().status_code == 200
            wait_until(lambda: slots.used == 0, "the slot given back")
    finally:
        go.set()
        live.stop()


def test_timed_out_explain_is_cancelled(weights: Path, images: list[Path]) -> None:  # noqa: F811
    """Each layer of the Grad-CAM model made 30 ms slow (about 2 s a pass): the request gets 504 at 0.5 s,
    and no layer runs after that but the one in flight; the Grad-CAM thread is free again at once."""
    live = LiveServer(settings_for(weights, timeout_s=0.5, max_wait_ms=0))
    model = live.app.state.engine.loaded.model
    ran: list[float] = []

    def slow(*_: object) -> None:
        time.sleep(0.03)
        ran.append(time.monotonic())

    hooks = [m.register_forward_hook(slow) for m in model.modules() if not list(m.children())]
    try:
        with live.client() as c:
            reply = c.post("/v1/explain", files=form(images[0]))
            answered = time.monotonic()
            assert reply.status_code == 504 and "--timeout-s" in reply.json()["detail"]
            wait_until(lambda: live.app.state.explain_slots.used == 0, "the timed-out Grad-CAM stopped", 2)
            time.sleep(0.5)
            late = [t - answered for t in ran if t > answered + 0.1]
            assert not late, f"{len(late)} layers ran after the 504 (up to {max(late):.2f} s after)"
            assert live.app.state.explain_pool.submit(lambda: "free").result(timeout=1) == "free"
    finally:
        for hook in hooks:
            hook.remove()
        live.stop()


# ---------------------------------------------------------------------------------------------- KServe


def test_v2_json_is_parsed_off_the_event_loop_under_a_bound(client: httpx.Client,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import resnets.serve.kserve as kserve

    threads: list[str] = []
    real_split = kserve._split
    monkeypatch.setattr(kserve, "_split", lambda *a: threads.append(threading.current_thread().name)
                        or real_split(*a))
    x = np.zeros((1, 3, 32, 32), np.float32)
    tensor = {"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32"}
    as_json = {"inputs": [{**tensor, "data": x.ravel().tolist()}]}
    assert client.post("/v2/models/resnet20/infer", json=as_json).status_code == 200
    assert threads and all(name.startswith("resnets-decode") for name in threads), threads

    monkeypatch.setattr(kserve, "MAX_JSON_BYTES", 4096)
    over = client.post("/v2/models/resnet20/infer", json=as_json)  # 3072 values: over 4 kB of JSON
    assert over.status_code == 413 and "binary" in over.json()["error"]
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    binary = client.post("/v2/models/resnet20/infer", content=head + x.tobytes(),
                         headers={"content-type": "application/octet-stream",
                                  "inference-header-content-length": str(len(head))})
    assert binary.status_code == 200, binary.text  # the same tensor as binary data: a small JSON part

    bad = client.post("/v2/models/resnet20/infer", content=b'{"inputs": [1,}',
                      headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"] == "the request is not valid JSON (line 1, column 15)"


# ------------------------------------------------------------------------------------ no exception text


SECRET = "secret-detail /srv/models/private.pt"


def test_internal_errors_answer_a_reference_and_log_the_detail(server: LiveServer, client: httpx.Client,  # noqa: F811
                                                                 images: list[Path],  # noqa: F811
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import resnets.serve.inputs as inputs

    def broken(*_: object, **__: object) -> Any:
        raise RuntimeError(SECRET)

    caplog.set_level(logging.ERROR, logger="resnets.serve")
    monkeypatch.setitem(server.app.state.batcher.functions, "logits", broken)
    replies = [client.post("/v1/predict", files=form(images[0])),
               client.post("/v2/models/resnet20/infer", json={"inputs": [{
                   "name": "images", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": [0] * 3072}]})]
    monkeypatch.setattr(server.app.state.engine, "explain", broken)
    replies.append(client.post("/v1/explain", files=form(images[0])))
    monkeypatch.setattr(inputs, "decode_resized", broken)
    replies.append(client.post("/v1/embed", files=form(images[0])))
    for reply in replies:
        assert reply.status_code == 500, reply.text
        text = reply.json().get("detail") or reply.json()["error"]
        assert text.startswith("internal error (reference ") and "server's log" in text
        assert "secret" not in reply.text and "RuntimeError" not in reply.text
        reference = text.split("reference ")[1].split(")")[0]
        assert any(reference in r.getMessage() and r.exc_info and SECRET in str(r.exc_info[1])
                   for r in caplog.records), reference


def test_undecodable_image_reason_is_the_servers_own(client: httpx.Client, images: list[Path]) -> None:  # noqa: F811
    """A PNG whose compressed data is damaged: the reason is this server's sentence, not zlib's message."""
    data = bytearray(png((64, 64)))
    start = data.index(b"IDAT") + 8
    data[start:start + 16] = b"\xff" * 16
    reply = client.post("/v1/predict", content=bytes(data), headers={"content-type": "image/png"})
    assert reply.status_code == 400
    assert reply.json()["detail"] == "cannot read image <body>: the image data is corrupt or in a form this " \
                                     "server cannot decode"


@pytest.mark.parametrize("mode", ["RGBA", "P+transparency", "LA", "I;16", "1", "CMYK"])
def test_every_mode_reduced_matches_the_predict_paths_preprocessing(photos: list[Path], mode: str) -> None:
    """The photo enlarged to 3000 x 3516 in each mode the reduced decode converts strip by strip: the
    network input is within 4 levels (of 255) of predict's (the image decoded whole, resized in float32), 6
    for a dithered 1-bit image."""
    from resnets.data import decode_rgb
    from resnets.infer.loading import preprocess
    from resnets.serve.decoding import decode_resized

    big = Image.open(photos[1]).convert("RGB")
    if mode == "RGBA" or mode == "LA":
        shade = Image.linear_gradient("L").resize(big.size)  # alpha from 0 to 255 down the image
        im = big.convert(mode[0] if mode == "LA" else "RGB")
        im.putalpha(shade)
    elif mode == "P+transparency":
        im = big.convert("P")
        im.info["transparency"] = 0
    elif mode == "I;16":
        im = Image.fromarray(np.asarray(big.convert("L"), np.uint16) * 257)
    else:
        im = big.convert(mode)
    buffer = io.BytesIO()
    im.save(buffer, "TIFF" if mode == "CMYK" else "PNG", **({"transparency": 0} if mode.startswith("P") else {}))
    data = buffer.getvalue()
    mean, std = [0.5] * 3, [1 / 255] * 3  # in levels of 255
    want = preprocess(decode_rgb(data), "imagenet", mean, std)
    got = preprocess(decode_resized(data, mode, 256, 25_000_000), "imagenet", mean, std)
    assert got.shape == want.shape == (3, 224, 224)
    tolerance = 6 if mode == "1" else 4  # a dithered bilevel image: nothing but the highest frequencies
    assert (got - want).abs().max() <= tolerance, float((got - want).abs().max())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", [1, 3, 6])
def test_reduced_decode_samples_where_the_full_image_is_sampled(photos: list[Path], fmt: str,
                                                                orientation: int) -> None:
    """A 3001 x 3517 photo for a 32-pixel model: the reduced decode (1/8 DCT scale, or a box reduce by 23)
    leaves a partial block in its last row and column, and the resize must sample the image where predict's
    does; EXIF orientations 3 and 6 put that edge on another side of the picture."""
    from resnets.data import decode_rgb
    from resnets.infer.loading import preprocess
    from resnets.serve.decoding import decode_resized

    im = Image.open(photos[1]).convert("RGB").resize((3001, 3517), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    im.save(buffer, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    data = buffer.getvalue()
    mean, std = [0.5] * 3, [1 / 255] * 3  # in levels of 255
    want = preprocess(decode_rgb(data), "cifar", mean, std)
    got = preprocess(decode_resized(data, fmt, 32, 25_000_000), "cifar", mean, std)
    assert got.shape == want.shape == (3, 32, 32)
    bound = 10 if fmt == "PNG" else 7  # measured 7.6 (box by 23) and 4.5 (1/8 DCT); 21.6 and 12.5 stretched
    assert (got - want).abs().max() <= bound, float((got - want).abs().max())
