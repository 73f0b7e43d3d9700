"""Load test of ``resnets serve`` on loopback against the offline predict path, same images, threads, precision.

For ResNet-50 (random weights; CIFAR JPEGs, which the server upscales to 224) and a trained ResNet-20, the
server runs as a subprocess on a free 127.0.0.1 port; async httpx clients send ``POST /v1/predict?topk=5``
(multipart ``file``) at each concurrency level, a fixed number of requests per level under a time cap:
requests/s, p50/p95/p99 latency, errors, and the mean batch size from ``/metrics`` before and after. Beside it,
in the same run and process, the offline predict path (``resnets.infer.predict``'s loop: decode, preprocess,
``FastModel``, softmax top-k; model built once) at batch ``--batch`` and at batch 1. Ratios: serve throughput at
the highest concurrency / offline throughput (goal >= 0.8), serve p50 at concurrency 1 / offline single-image
latency (goal <= 1.3).

    .venv/bin/python benchmarks/serve_load.py --out runs/serve-load [--resnet20 W] [--plot FILE] [--quick]

Without ``--resnet20`` a ResNet-20 is trained for 2 epochs on the shipped sample (about a minute) into
``OUT/resnet20-run`` and reused. Run on a quiet machine: the client, the server and the offline path share it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from resnets.data import extract_sample, read_rgb
from resnets.hardware import cpu_name
from resnets.infer.fastpath import FastModel
from resnets.infer.loading import LoadedModel, expand_paths, load_for_inference, read_batches

CIFAR_TEST = Path("/work/shared/data/cifar10-jpeg/test")
LEVELS = (1, 8, 32)
THROUGHPUT_GOAL, LATENCY_GOAL = 0.8, 1.3
TOPK = 5


@dataclass
class Level:
    """One concurrency level's results."""

    concurrency: int
    requests: int  # sent
    ok: int
    errors: int
    wall_s: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float | None  # images per forward pass, from /metrics
    client_cpu: float  # the load generator's CPU time / wall time (near 1: the client may be the bottleneck)
    first_error: str = ""


@dataclass
class ModelResult:
    """A model's offline baseline, its serve levels, and the two ratios."""

    model: str
    weights: str
    classes: int
    input_size: int
    precision: str
    offline_batch: int
    offline_images_per_s: float
    offline_images: int
    single_p50_ms: float
    single_p95_ms: float
    single_images: int
    server: dict[str, object] = field(default_factory=dict)
    levels: list[Level] = field(default_factory=list)
    throughput_ratio: float | None = None  # serve req/s at the top level / offline images/s
    latency_ratio: float | None = None  # serve p50 at concurrency 1 / offline single-image p50


def pick_images(folder: Path, count: int) -> list[str]:
    """``count`` images spread evenly over ``folder``'s sorted image files (so over its classes)."""
    files, _ = expand_paths([folder])
    if not files:
        sys.exit(f"serve_load: no images in {folder}")
    step = max(1, len(files) // count)
    return files[::step][:count]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile_ms(times: list[float], q: float) -> float:
    """The ``q``-th percentile of ``times`` (seconds) in milliseconds; NaN if empty."""
    return float(np.percentile(np.array(times) * 1e3, q)) if times else float("nan")


# ---------------------------------------------------------------- offline: the predict path, model built once

def offline(loaded: LoadedModel, files: list[str], precision: str, batch: int, min_s: float,
            single: int) -> tuple[float, int, list[float], str]:
    """(images/s at ``batch``, images timed, single-image latencies in s, precision used): ``predict``'s loop
    (read, preprocess, fast path, softmax top-k) over ``files``, repeated until ``min_s`` has passed."""
    fast = FastModel(loaded.model, precision, input_size=loaded.input_size, model_key=loaded.name)
    k = min(TOPK, len(loaded.classes))

    def run(paths: list[str], bs: int) -> int:
        done = 0
        for good, inputs, _ in read_batches(paths, loaded, bs):
            if inputs is not None:
                torch.softmax(fast(inputs), dim=1).topk(k, dim=1)
                done += len(good)
        return done

    run(files[:batch], batch)  # warm-up
    images, start = 0, time.perf_counter()
    while True:
        images += run(files, batch)
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            break
    throughput = images / elapsed
    latencies = []
    for i in range(single + 3):
        path = files[i % len(files)]
        t0 = time.perf_counter()
        x = loaded.preprocess(read_rgb(path)).unsqueeze(0)
        torch.softmax(fast(x), dim=1).topk(k, dim=1)
        if i >= 3:  # three warm-up images
            latencies.append(time.perf_counter() - t0)
    return throughput, images, latencies, fast.precision


# ---------------------------------------------------------------- the server and its load

class Server:
    """``resnets serve`` as a subprocess on a free loopback port, logging to ``log``."""

    def __init__(self, weights: str, *, precision: str, threads: int, max_batch: int, log: Path,
                 extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "resnets", "serve", "--weights", weights, "--host", "127.0.0.1",
               "--port", str(self.port), "--precision", precision, "--threads", str(threads),
               "--max-batch", str(max_batch), *extra]
        self.command = cmd
        self.log = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/readyz`` until it answers 200; exit with the log's tail if the server dies or times out."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"exited with {self.proc.returncode} before it was ready")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.fail(f"not ready after {timeout_s:.0f} s")

    def fail(self, why: str) -> None:
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        sys.exit(f"serve_load: the server {why}: {' '.join(self.command)}\n{tail}")

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 15 s) and close its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the server's ``resnets_batch_size`` histogram."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "resnets_batch_size":
            for s in family.samples:
                if s.name.endswith("_sum"):
                    total += s.value
                elif s.name.endswith("_count"):
                    count += s.value
    return total, count


async def load(url: str, images: list[tuple[str, bytes]], concurrency: int, requests: int,
               cap_s: float) -> tuple[list[float], int, int, float, str]:
    """(latencies of the good answers, sent, errors, wall seconds, first error): ``requests`` predict calls
    from ``concurrency`` clients at once, none started after ``cap_s``."""
    import httpx

    latencies: list[float] = []
    errors, sent, first_error = 0, 0, ""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors, sent, first_error
        while sent < requests and time.perf_counter() - start < cap_s:
            name, data = images[sent % len(images)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/predict", params={"topk": TOPK},
                                    files={"file": (name, data, "image/jpeg")})
                ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
                why = "" if ok else f"HTTP {r.status_code}: {r.text[:200]}"
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
                first_error = first_error or why

    async with httpx.AsyncClient(limits=limits, timeout=120.0) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return latencies, sent, errors, time.perf_counter() - start, first_error


def serve_levels(result: ModelResult, server: Server, images: list[tuple[str, bytes]], levels: tuple[int, ...],
                 requests: int, cap_s: float) -> None:
    """Warm the server up, then run each concurrency level, appending to ``result.levels``."""
    import httpx

    result.server = {k: v for k, v in httpx.get(f"{server.url}/v1/model", timeout=10.0).json().items()
                     if k not in ("classes",)}
    asyncio.run(load(server.url, images, min(4, max(levels)), 2 * min(4, max(levels)), cap_s))  # warm-up
    for c in levels:
        s0, n0 = batch_stats(server.url)
        cpu0 = time.process_time()
        lat, sent, errors, wall, first_error = asyncio.run(load(server.url, images, c, max(requests, c), cap_s))
        cpu = (time.process_time() - cpu0) / wall
        s1, n1 = batch_stats(server.url)
        result.levels.append(Level(c, sent, len(lat), errors, wall, len(lat) / wall, percentile_ms(lat, 50),
                                   percentile_ms(lat, 95), percentile_ms(lat, 99),
                                   (s1 - s0) / (n1 - n0) if n1 > n0 else None, cpu, first_error))
        print(f"  {result.model} concurrency {c}: {len(lat)}/{sent} ok, {len(lat) / wall:.1f} req/s, "
              f"p50 {percentile_ms(lat, 50):.1f} ms", flush=True)


# ---------------------------------------------------------------- the models

def resnet50_weights(folder: Path) -> str:
    """A random-weight ResNet-50 (1000 ImageNet classes) saved in ``folder``."""
    from resnets import create_model
    from resnets.weights import save_weights

    torch.manual_seed(0)
    path = folder / "resnet50-random.safetensors"
    save_weights(create_model("resnet50"), path)
    return str(path)


def resnet20_weights(given: str | None, out: Path) -> str:
    """``given``, else a ResNet-20 trained for 2 epochs on the shipped sample into ``out/resnet20-run``."""
    if given:
        return given
    run = out / "resnet20-run"
    if not (run / "final.safetensors").is_file():
        print(f"training a ResNet-20 for 2 epochs on the shipped sample into {run} ...", flush=True)
        subprocess.run([sys.executable, "-m", "resnets", "train", "--model", "resnet20", "--data", "sample",
                        "--epochs", "2", "--out", str(run), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return str(run / "final.safetensors")


def bench_model(weights: str, files: list[str], args: argparse.Namespace, requests: int,
                out: Path) -> ModelResult:
    """The offline baseline and the serve levels of the model in ``weights``."""
    loaded = load_for_inference(weights)
    print(f"{loaded.name}: offline predict path ...", flush=True)
    single = args.single or (10 if args.quick else 50)
    thr, n_off, single_lat, precision = offline(loaded, files, args.precision, args.batch,
                                                args.offline_s or (1.0 if args.quick else 5.0), single)
    result = ModelResult(loaded.name, weights, len(loaded.classes), loaded.input_size, precision, args.batch,
                         thr, n_off, percentile_ms(single_lat, 50), percentile_ms(single_lat, 95), len(single_lat))
    del loaded
    extra = ["--max-wait-ms", str(args.max_wait_ms)] if args.max_wait_ms is not None else []
    server = Server(weights, precision=precision, threads=args.threads, max_batch=args.batch,
                    log=out / f"server-{result.model}.log", extra=extra)
    try:
        server.wait_ready(args.ready_s)
        images = [(Path(p).name, Path(p).read_bytes()) for p in files]
        serve_levels(result, server, images, LEVELS, requests, args.cap_s)
    finally:
        server.stop()
    top, first = result.levels[-1], result.levels[0]
    result.throughput_ratio = top.requests_per_s / thr
    result.latency_ratio = first.p50_ms / result.single_p50_ms
    return result


# ---------------------------------------------------------------- report

def markdown(results: list[ModelResult], meta: dict[str, object]) -> str:
    """The results as markdown tables."""
    lines = [f"CPU: {meta['cpu']}; {meta['threads']} torch threads (server and offline), "
             f"{meta['cores']} logical cores; torch {meta['torch']}; {meta['date']}", "",
             "| model | concurrency | requests ok/sent | errors | req/s | p50 ms | p95 ms | p99 ms | mean batch "
             "| client CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for lv in r.levels:
            mb = f"{lv.mean_batch:.1f}" if lv.mean_batch is not None else "-"
            lines.append(f"| {r.model} | {lv.concurrency} | {lv.ok}/{lv.requests} | {lv.errors} | "
                         f"{lv.requests_per_s:.1f} | {lv.p50_ms:.1f} | {lv.p95_ms:.1f} | {lv.p99_ms:.1f} | {mb} "
                         f"| {lv.client_cpu:.0%} |")
    top = LEVELS[-1]
    lines += ["", f"| model | precision | offline img/s (batch {results[0].offline_batch if results else '-'}) | "
              f"offline batch-1 p50 ms | serve/offline throughput at c={top} (goal >= {THROUGHPUT_GOAL}) | "
              f"serve p50 at c=1 / offline batch-1 p50 (goal <= {LATENCY_GOAL}) |",
              "|---|---|---:|---:|---:|---:|"]
    for r in results:
        t_ok = "met" if (r.throughput_ratio or 0) >= THROUGHPUT_GOAL else "missed"
        l_ok = "met" if (r.latency_ratio or float("inf")) <= LATENCY_GOAL else "missed"
        lines.append(f"| {r.model} | {r.precision} | {r.offline_images_per_s:.1f} | {r.single_p50_ms:.1f} | "
                     f"{r.throughput_ratio:.2f} ({t_ok}) | {r.latency_ratio:.2f} ({l_ok}) |")
    errors = [f"{r.model} at concurrency {lv.concurrency}: {lv.errors} errors, the first: {lv.first_error}"
              for r in results for lv in r.levels if lv.errors]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def plot(results: list[ModelResult], path: str, meta: dict[str, object]) -> None:
    """p50/p95/p99 latency against concurrency, one panel per model, offline batch-1 p50 dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        xs = [lv.concurrency for lv in r.levels]
        for q in ("p50", "p95", "p99"):
            ax.plot(xs, [getattr(lv, f"{q}_ms") for lv in r.levels], marker="o", label=q)
        ax.axhline(r.single_p50_ms, color="grey", linestyle="--", label="offline batch-1 p50")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{r.model} ({r.precision})")
        ax.legend()
    fig.suptitle(f"resnets serve on loopback, {meta['cpu']}, {meta['threads']} threads", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, metavar="DIR", help="folder for serve_load.json, .md and server logs")
    ap.add_argument("--resnet20", default=None, metavar="WEIGHTS",
                    help="a trained ResNet-20 (default: train one for 2 epochs on the shipped sample)")
    ap.add_argument("--images", default=None, metavar="DIR",
                    help=f"JPEGs to send (default: {CIFAR_TEST} if present, else the shipped sample's test set)")
    ap.add_argument("--models", default="resnet20,resnet50", help="comma-separated: resnet20, resnet50")
    ap.add_argument("--requests20", type=int, default=None, help="requests per level for ResNet-20 (default 200)")
    ap.add_argument("--requests50", type=int, default=None, help="requests per level for ResNet-50 (default 100)")
    ap.add_argument("--cap-s", type=float, default=None, help="time cap per level, seconds (default 60)")
    ap.add_argument("--batch", type=int, default=32, help="offline batch size and the server's --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=None, help="the server's --max-wait-ms (default its own)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads, offline and server (default torch's, here %(default)s)")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="resolved once offline, then given to the server as is")
    ap.add_argument("--offline-s", type=float, default=None, help="offline throughput timed for at least this")
    ap.add_argument("--single", type=int, default=None, help="images for offline batch-1 latency (default 50)")
    ap.add_argument("--ready-s", type=float, default=180.0, help="wait this long for the server's /readyz")
    ap.add_argument("--plot", default=None, metavar="FILE", help="latency plot (PNG)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few requests, short caps")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    folder = Path(args.images) if args.images else (CIFAR_TEST if CIFAR_TEST.is_dir() else extract_sample() / "test")
    files = pick_images(folder, 64 if args.quick else 256)
    requests = {"resnet20": args.requests20 or (32 if args.quick else 200),
                "resnet50": args.requests50 or (16 if args.quick else 100)}
    args.cap_s = args.cap_s or (20.0 if args.quick else 60.0)
    meta: dict[str, object] = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
        "python": platform.python_version(), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "images": str(folder), "image_count": len(files), "levels": list(LEVELS), "quick": args.quick,
        "cap_s": args.cap_s, "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print(f"CPU: {meta['cpu']}, {args.threads} threads; images: {len(files)} from {folder}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name == "resnet20":
                weights = resnet20_weights(args.resnet20, out)
            elif name == "resnet50":
                weights = resnet50_weights(Path(tmp))
            else:
                sys.exit(f"serve_load: unknown model {name!r}; choose resnet20, resnet50")
            results.append(bench_model(weights, files, args, requests[name], out))
    table = markdown(results, meta)
    print("\n" + table)
    (out / "serve_load.md").write_text(table)
    (out / "serve_load.json").write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]},
                                                    indent=2) + "\n")
    if args.plot:
        plot(results, args.plot, meta)
    print(f"wrote {out / 'serve_load.json'}, {out / 'serve_load.md'}" + (f", {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    main()
