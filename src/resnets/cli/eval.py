"""``resnets eval``: score trained weights on a data set (top-1, top-5, per class, confusion matrix)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate weights on a data set: accuracy, confusion matrix, report")
    from .predict import add_weights_args

    add_weights_args(p)
    p.add_argument("--data", default="sample", help="sample (default), cifar10, cifar100, shards, or a folder: "
                   "with val/ or test/, or of class folders (a test set alone); train/ is never read")
    p.add_argument("--tta", choices=("flip", "10crop"), help="test-time augmentation")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--out", help="folder for the JSON report and confusion PNG (default: the weights' folder)")
    p.add_argument("--cache-dir")
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--max-images", type=int, metavar="N", help="score a fixed subset of N images only")
    p.add_argument("--image-size", type=int, metavar="N", help="feed N pixels instead of the side the weights "
                   "were trained at (said in one line): small images scaled to N, large ones' centre crop N")
    p.add_argument("--workers", type=int, help="loader processes for large images and shards (default: the "
                   "CPU cores available, at most 4)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate
    from ..infer.loading import resolve_weights_path
    from ..outputs import plan_out

    out = None
    if args.out is not None:  # before the work; the report may sit beside the weights (the default)
        out = plan_out(args.out, folder=True, may_hold_inputs=True,
                       inputs=[("the --weights file", resolve_weights_path(args.weights, args.model)),
                               ("the --data folder", args.data)])
    from .predict import loaded_weights

    weights = loaded_weights(args) if args.shortcut_pad else args.weights
    report = evaluate(weights, args.data, tta=args.tta, device=args.device, precision=args.precision,
                      batch_size=args.batch_size, out_dir=args.out, cache_dir=args.cache_dir,
                      skip_bad_images=args.skip_bad_images, workers=args.workers, max_images=args.max_images,
                      model_name=args.model, variant=args.variant, image_size=args.image_size,
                      progress=not args.no_progress, log=_note)
    if out is not None:
        out.say_created()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['model']['name']} on {report['data']} ({report['images']} images"
          f"{', TTA ' + report['tta'] if report['tta'] else ''}): top-1 {report['top1']:.2f}%  "
          f"top-5 {report['top5']:.2f}%  loss {report['loss']:.4f}")
    width = max(len(c) for c in report["classes"])
    for name, acc in report["per_class"].items():
        print(f"  {name:<{width}}  {'-' if acc is None else f'{acc:6.2f}%'}")
    if report["missing_classes"]:
        print(f"classes with no images in {report['data']}: {', '.join(report['missing_classes'])}")
    if report["bad_images"]:
        print(f"skipped {len(report['bad_images'])} bad image(s), listed in the report")
    print(f"report {report['report']}; confusion matrix {report['confusion_png']}")
    return 0


def _note(line: str) -> None:
    """A one-line note on stderr, e.g. that --image-size overrides the trained size."""
    import sys

    print(f"resnets eval: {line}", file=sys.stderr)
