"""Peak memory of ``resnets serve`` under the costliest image requests one can build: highly compressed images
at the server's pixel limit (one colour: a few kB to a few hundred kB each, so that many fit in a 20 MB body),
sent as one multipart request (or several at once).

For each kind of image, a fresh ``resnets serve`` process (ResNet-18, random weights, ImageNet
preprocessing: shorter side 256, centre 224) is started on a free loopback port; after one small warm-up
request its peak resident memory is reset (``5 > /proc/PID/clear_refs``) and the request sent; then VmHWM is
read from ``/proc/PID/status``. Printed and written (``--out``): the answer, its time, the resident memory
before, the peak, and the rise.

    .venv/bin/python benchmarks/serve_worst_request.py [--src OTHER_CHECKOUT/src] [--pixels N] [--images N]
        [--concurrent N] [--kinds jpeg,png-rgb,...] [--out FILE.json]

``--src`` serves another copy of resnets (e.g. the code before a change: ``git archive REV src | tar -x -C
/tmp/old``), with this checkout's Python environment. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MAX_FILES = 256  # the server's files per request
BODY_LIMIT = 20 * 1024 * 1024  # its default --max-body-mb


def image(kind: str, side: tuple[int, int]) -> bytes:
    """One highly compressed image of ``kind`` and size ``side``."""
    buffer = io.BytesIO()
    if kind == "jpeg":
        Image.new("RGB", side, (90, 140, 200)).save(buffer, "JPEG", quality=75)
    elif kind == "png-rgb":
        Image.new("RGB", side, (90, 140, 200)).save(buffer, "PNG")
    elif kind == "png-rgba":
        Image.new("RGBA", side, (90, 140, 200, 128)).save(buffer, "PNG")
    elif kind == "png-palette-alpha":
        im = Image.new("P", side, 1)
        im.putpalette([255, 0, 0, 90, 140, 200] + [0] * 762)
        im.save(buffer, "PNG", transparency=0)
    elif kind == "png-16bit":
        Image.fromarray(np.full((side[1], side[0]), 30000, np.uint16)).save(buffer, "PNG")
    elif kind == "png-1bit":
        Image.new("1", side, 1).save(buffer, "PNG")
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def start(src: Path, weights: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "resnets", "serve", "--weights", str(weights), "--port",
                             str(port), "--threads", "1", "--precision", "fp32", *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not get ready in 180 s")


def measure(src: Path, weights: Path, kind: str, side: tuple[int, int], count: int, concurrent: int,
            extra: list[str]) -> dict[str, object]:
    data = image(kind, side)
    count = count or min(MAX_FILES, (BODY_LIMIT - 65536) // (len(data) + 200))  # as many as fit
    files = [("file", (f"{i}.{kind.split('-')[0]}", data, "image/" + kind.split("-")[0])) for i in range(count)]
    proc, url = start(src, weights, extra)
    try:
        warm = httpx.post(f"{url}/v1/predict", files=[("file", ("w", image(kind, (600, 400)), "image/png"))] * 2,
                          timeout=120)
        assert warm.status_code == 200, warm.text
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        before = status_kb(proc.pid, "VmRSS")
        start_s = time.perf_counter()
        with ThreadPoolExecutor(concurrent) as pool:
            replies = list(pool.map(lambda _: httpx.post(f"{url}/v1/predict", files=files, timeout=1800),
                                    range(concurrent)))
        seconds = time.perf_counter() - start_s
        peak = status_kb(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    statuses = sorted({r.status_code for r in replies})
    detail = replies[0].json().get("detail", "") if replies[0].status_code != 200 else ""
    return {"kind": kind, "size": f"{side[0]}x{side[1]}", "image_bytes": len(data), "images": count,
            "concurrent": concurrent, "body_mb": round(count * len(data) / 1048576, 2), "status": statuses,
            "detail": detail[:120], "seconds": round(seconds, 1), "rss_before_mb": round(before / 1024),
            "peak_mb": round(peak / 1024), "rise_mb": round((peak - before) / 1024)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=ROOT / "src", help="the resnets sources to serve (default: these)")
    p.add_argument("--pixels", default="5000x5000", help="image size WxH (default 5000x5000, 25 Mpx: the "
                   "largest under the default --max-pixels; the limit before it was 8192x8192)")
    p.add_argument("--images", type=int, default=0, help="images per request (default: as many as fit in 20 MB, "
                   f"at most {MAX_FILES})")
    p.add_argument("--concurrent", type=int, default=1, help="identical requests sent at once (default 1)")
    p.add_argument("--kinds", default="jpeg,png-rgb,png-rgba,png-palette-alpha,png-16bit,png-1bit")
    p.add_argument("--serve-args", default="", help="more options for resnets serve, e.g. '--max-pixels 70000000'")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("this benchmark reads /proc/PID/status: Linux only")
    side = tuple(int(v) for v in args.pixels.lower().split("x"))
    sys.path.insert(0, str(args.src))
    import torch

    from resnets import create_model
    from resnets.weights import save_weights

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "r18.safetensors"
        torch.manual_seed(0)
        save_weights(create_model("resnet18"), weights)
        for kind in args.kinds.split(","):
            row = measure(args.src, weights, kind, side, args.images, args.concurrent, args.serve_args.split())
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                                        "machine": platform.processor() or platform.machine(),
                                        "src": str(args.src), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
