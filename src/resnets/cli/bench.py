"""``resnets bench``: measurements; ``bench infer`` times CPU inference paths against torchvision and ONNX."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="benchmarks (bench infer: CPU inference speed and fidelity)")
    sub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    q = sub.add_parser("infer", help="images/s, latency, memory and top-1 agreement of the inference paths")
    q.add_argument("--model", default="resnet50", help="model name (default resnet50)")
    q.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    q.add_argument("--iters", type=int, default=20, help="timed batches per path (default 20)")
    q.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    q.add_argument("--agreement-images", type=int, default=256,
                   help="real images for top-1 agreement and logits error (default 256)")
    q.add_argument("--images", default=None, metavar="DIR",
                   help="folder of real images (default: the shipped sample's 1,000 test images)")
    q.add_argument("--compile", action="store_true", help="also time the torch.compile'd fast path")
    q.add_argument("--no-onnx", action="store_true", help="skip onnxruntime (float32 and int8)")
    q.add_argument("--no-int8", action="store_true", help="skip onnxruntime int8")
    q.add_argument("--int8-calibration", type=int, default=128, metavar="N",
                   help="further real images to calibrate int8 on (default 128)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=run_infer)


def run_infer(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..infer.bench import bench_infer, format_report, images_root

    images_root(args.images)  # a wrong --images fails now, not after the set-up
    report = bench_infer(args.model, args.batch, args.iters, warmup=args.warmup,
                         agreement_images=args.agreement_images, images=args.images, compile=args.compile,
                         onnx=not args.no_onnx, int8=not args.no_int8, int8_calibration=args.int8_calibration,
                         progress=lambda m: print(f"... {m}", file=sys.stderr))
    print(json.dumps(report.as_dict(), indent=1) if args.json else format_report(report))
    return 0
