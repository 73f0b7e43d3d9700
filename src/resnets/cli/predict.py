"""``resnets predict``: top-k labels for image files, folders and globs."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..infer.loading import LoadedModel


def add_weights_args(p: argparse.ArgumentParser, *, shortcut_pad: bool = True) -> None:
    """The ``--weights``/``--model`` pair shared by the inference commands (and ``--shortcut-pad`` where the
    command loads through :func:`loaded_weights`)."""
    p.add_argument("--weights", required=True, metavar="FILE|NAME",
                   help="a resnets .safetensors file or run folder, a torchvision/timm .pth with --model, or a "
                        "weights name (resnets weights list; fetched once, checked)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="architecture of a foreign .pth (e.g. resnet50); ImageNet names and normalisation")
    p.add_argument("--variant", default=None, metavar="NAME",
                   help="with --model: the architecture variant of the .pth (v1.5 default, v1, d, preact)")
    if shortcut_pad:
        p.add_argument("--shortcut-pad", choices=("after", "both"), default=None,
                       help="CIFAR option-A weights: put the zero channels after the identity (resnets') or on both "
                            "sides (akamaster's); default: detected from the checkpoint's layout")


def loaded_weights(args: argparse.Namespace) -> LoadedModel:
    """The model that ``--weights``/``--model``/``--variant`` name, loaded (a run folder: its best weights)."""
    from ..infer.loading import load_for_inference

    return load_for_inference(args.weights, args.model, variant=args.variant,
                              shortcut_pad=getattr(args, "shortcut_pad", None))


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision``: the fast path's number format."""
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="BN folded + channels_last always; auto: bf16 where a one-second probe times it faster on this CPU (cached), else fp32; bf16 or fp32 forces it")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="top-k labels for images (files, folders, globs)")
    add_weights_args(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    p.add_argument("--topk", type=int, default=5, help="labels per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    add_precision_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import csv
    import json
    import sys

    from ..infer.predict import predict

    def report(path: str, message: str) -> None:
        print(f"resnets predict: skipped {path}: {message}", file=sys.stderr)

    result = predict(loaded_weights(args), args.paths, model_name=args.model, topk=args.topk,
                     batch_size=args.batch_size, precision=args.precision, on_failure=report,
                     progress=not args.no_progress)
    out = sys.stdout
    if args.format == "json":
        json.dump([{"path": p.path, "top": [{"label": n, "index": i, "prob": round(v, 6)} for n, i, v in p.labels]}
                   for p in result.predictions], out, indent=1)
        out.write("\n")
    elif args.format == "csv":
        writer = csv.writer(out)
        writer.writerow(["path", "rank", "label", "index", "prob"])
        for p in result.predictions:
            for rank, (n, i, v) in enumerate(p.labels, 1):
                writer.writerow([p.path, rank, n, i, f"{v:.6f}"])
    else:
        width = max((len(p.path) for p in result.predictions), default=4)
        for p in result.predictions:
            tops = "  ".join(f"{n} {v:.1%}" for n, _, v in p.labels)
            out.write(f"{p.path:<{width}}  {tops}\n")
    if not result.predictions and not result.failures:
        print("resnets predict: no images found", file=sys.stderr)
        return 1
    return 1 if result.failures else 0
