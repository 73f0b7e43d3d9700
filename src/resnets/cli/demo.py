"""``resnets demo``: the README's main command, end to end on a fresh machine."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the quick start: show ResNet-50, then the shipped-sample workflow")
    p.add_argument("--epochs", type=float, default=10, help="training epochs on the sample (default 10)")
    p.add_argument("--out", help="run folder (default runs/demo-<time>)")
    p.add_argument("--no-train", action="store_true", help="only print the ResNet-50 summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .summary import run as run_summary

    rc = run_summary(argparse.Namespace(model="resnet50", variant=None, input_size=224, num_classes=None,
                                        depth="stages", json=False))
    if rc or getattr(args, "no_train", False):
        return rc
    from ..data import extract_sample
    from ..evaluate import evaluate
    from ..outputs import plan_out
    from ..train import resolve_config, train

    out = getattr(args, "out", None) or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    plan_out(out, folder=True)  # before the work
    print(f"\n== training resnet20 on the shipped CIFAR-10 sample ({args.epochs:g} epochs) ==")
    # batch 128 rather than the fast recipe's 512: 3,000 images give 23 steps an epoch, enough to learn in a minute
    result = train(resolve_config({"model": "resnet20", "data": "sample", "epochs": args.epochs, "batch_size": 128,
                                   "out": out}))
    print(f"\n== evaluating {result.best_weights} on the sample's test split ==")
    report = evaluate(result.best_weights, "sample")
    print(f"top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  ({report['images']} images; "
          f"report {report['report']}, confusion matrix {report['confusion_png']})")
    from . import main

    test_dir = Path(extract_sample()) / "test"
    images = [str(next(iter(sorted(d.iterdir())))) for d in sorted(test_dir.iterdir()) if d.is_dir()][:4]
    print("\n== predicting a few sample images ==")
    return main(["predict", "--weights", str(result.best_weights), "--topk", "3", *images])
