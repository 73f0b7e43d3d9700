"""``resnets serve``: an HTTP inference service for any weights ``predict`` takes (see docs/serve.md)."""

from __future__ import annotations

import argparse

from ..serve.settings import MAX_PIXELS
from .predict import add_precision_arg, add_weights_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve a model over HTTP (predict, embed, explain, KServe v2)")
    add_weights_args(p, shortcut_pad=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine "
                   "only; any other needs --api-key-file or --no-auth)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--backend", choices=("torch", "onnx", "int8"), default="torch",
                   help="torch: the fast path (BN folded, channels_last); onnx/int8: onnxruntime on an export "
                        "made at startup")
    p.add_argument("--max-batch", type=int, default=32, help="most images per forward pass (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more requests after its first (default 5)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for the model before 503 (default 256)")
    p.add_argument("--timeout-s", type=float, default=30.0,
                   help="longest wait for the model before 504 (default 30)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (default 20 MB)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"largest image, in pixels, refused from its header (default {MAX_PIXELS}: a 24-Mpx photo)")
    p.add_argument("--max-decode-queue", type=int, default=32,
                   help="requests waiting for or in decoding before 503 (default 32)")
    p.add_argument("--max-explain-queue", type=int, default=4,
                   help="Grad-CAM requests waiting or running before 503 (default 4)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: torch's, divided among --workers)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--api-key-file", default=None, metavar="FILE",
                      help="file holding the API key; requests then need 'Authorization: Bearer <key>'")
    auth.add_argument("--no-auth", action="store_true", help="allow a non-loopback --host without a key")
    add_precision_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util
    import os

    from ..errors import UserError
    from ..serve.settings import ServeSettings

    settings = ServeSettings(weights=args.weights, model=args.model, variant=args.variant, host=args.host,
                             port=args.port, backend=args.backend, max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, timeout_s=args.timeout_s,
                             max_body_mb=args.max_body_mb, workers=args.workers, api_key_file=args.api_key_file,
                             no_auth=args.no_auth, precision=args.precision, threads=args.threads,
                             max_pixels=args.max_pixels, max_decode_queue=args.max_decode_queue,
                             max_explain_queue=args.max_explain_queue)
    settings.check()
    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "prometheus_client")):
        raise UserError("serving needs fastapi, uvicorn and prometheus-client: pip install 'resnets[serve]'")
    if settings.backend in ("onnx", "int8"):
        from ..infer.export import require_onnx

        require_onnx()
    from ..serve.runner import serve

    if settings.threads is None and settings.workers > 1:
        settings.threads = max(1, (os.cpu_count() or 1) // settings.workers)
    return serve(settings)
