"""``resnets export``: ONNX (dynamic batch) or TorchScript, checked against PyTorch before it is kept."""

from __future__ import annotations

import argparse

from .predict import add_weights_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export to ONNX or TorchScript, checked against PyTorch")
    add_weights_args(p)
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="output format")
    p.add_argument("--out", default=None, metavar="FILE", help="output file (default: beside the weights)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..infer.export import ExportCheckError, export

    try:
        result = export(args.weights, args.format, out=args.out, model_name=args.model, opset=args.opset)
    except ExportCheckError as exc:
        print(f"resnets export: check failed: {exc}", file=sys.stderr)
        return 1
    checker = "onnxruntime" if result.format == "onnx" else "torch.jit"
    print(f"wrote {result.path}; {checker} vs PyTorch at batch sizes "
          f"{', '.join(map(str, result.batches))}: max abs difference {result.max_abs_diff:.3g} "
          f"(logits up to {result.max_abs_ref:.3g})")
    return 0
