"""resnets serve's memory under the requests that cost the most: the peak resident memory of a fresh
``resnets serve`` process (VmHWM in /proc/<pid>/status, reset to the current size just before the request by
writing 5 to /proc/<pid>/clear_refs) must stay within what decoding at reduced size costs, so a server that
decoded these images at full size, or turned them into float32 at full size, fails."""

from __future__ import annotations

import io
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from test_serve import start_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status (Linux)")

MB = 1024 * 1024
PHOTO = (6000, 4000)  # a 24-megapixel photo: within the default --max-pixels of 25 000 000


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from resnets import create_model
    from resnets.weights import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("serve-memory") / "r20.safetensors"
    save_weights(create_model("resnet20", num_classes=10), path, classes=[f"c{i}" for i in range(10)])
    return path


@pytest.fixture(scope="module")
def server(weights: Path) -> Iterator[tuple[int, str]]:
    """A fresh ``resnets serve`` process with the default limits: (pid, url)."""
    proc, url = start_cli(weights)
    try:
        yield proc.pid, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except Exception:  # noqa: BLE001 - a server that does not stop is killed
            proc.kill()
            proc.wait()


def encoded(size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    """A highly compressed image of ``size``: one colour, as a decompression bomb would be."""
    buffer = io.BytesIO()
    Image.new(mode, size, (90, 140, 200) if mode == "RGB" else 128).save(buffer, fmt)
    return buffer.getvalue()


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def peak_growth(pid: int, url: str, files: list[tuple[str, tuple[str, bytes, str]]], route: str = "/v1/predict"
                ) -> tuple[httpx.Response, float]:
    """The server's answer to ``files`` and how far its resident memory rose above where it was just before
    (MB): the high-water mark is reset to the current size, then read after the answer."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    baseline = status_kb(pid, "VmRSS")
    reply = httpx.post(f"{url}{route}", files=files, timeout=120)
    return reply, (status_kb(pid, "VmHWM") - baseline) / 1024


def warm(url: str, fmt: str) -> None:
    """One small request of the kind measured, so that first-use costs (codec tables, thread stacks) are not
    counted."""
    data = encoded((600, 400), fmt)
    reply = httpx.post(f"{url}/v1/predict", files=[("file", (f"warm.{fmt.lower()}", data, "image/jpeg"))] * 2,
                       timeout=60)
    assert reply.status_code == 200, reply.text


def test_a_pixel_bomb_is_refused_from_its_header_at_no_memory_cost(server: tuple[int, str]) -> None:
    """A 25.005-Mpx PNG of 76 kB, just over --max-pixels: decoded, it would take 100 MB (Pillow's RGB)."""
    pid, url = server
    warm(url, "PNG")
    bomb = encoded((5001, 5000), "PNG")
    assert len(bomb) < 200_000
    reply, grew = peak_growth(pid, url, [("file", ("bomb.png", bomb, "image/png"))])
    assert grew < 24, f"refusing a pixel bomb raised the server's peak memory by {grew:.0f} MB"
    assert reply.status_code == 400, reply.text
    assert "--max-pixels" in reply.json()["detail"] and "5001x5000" in reply.json()["detail"]


def test_24_megapixel_jpegs_decode_at_reduced_size(server: tuple[int, str]) -> None:
    """Four 24-Mpx JPEGs: decoded at 1/8 scale (750 x 500) they cost a few MB; at full size, 100+ MB each
    (two decoding at once), and as float32 at full size 300+ MB each."""
    pid, url = server
    warm(url, "JPEG")
    photo = encoded(PHOTO, "JPEG")
    reply, grew = peak_growth(pid, url, [("file", (f"p{i}.jpg", photo, "image/jpeg")) for i in range(4)])
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["predictions"]) == 4
    assert grew < 48, f"four 24-Mpx JPEGs raised the server's peak memory by {grew:.0f} MB"


def test_24_megapixel_pngs_cost_no_more_than_their_decode(server: tuple[int, str]) -> None:
    """Two 24-Mpx PNGs (no reduced decode for PNG), decoding at once: each costs its decoded RGB image (Pillow
    keeps 4 bytes a pixel, 96 MB) and little more, not the 12 bytes a pixel of a full-size float32 copy."""
    pid, url = server
    warm(url, "PNG")
    photo = encoded(PHOTO, "PNG")
    reply, grew = peak_growth(pid, url, [("file", (f"p{i}.png", photo, "image/png")) for i in range(2)])
    assert reply.status_code == 200, reply.text
    pixels = PHOTO[0] * PHOTO[1]
    bound = 2 * pixels * 5 / MB  # two at once, 4 bytes a pixel and a margin
    assert grew < bound, f"two 24-Mpx PNGs raised the server's peak memory by {grew:.0f} MB (bound {bound:.0f})"
