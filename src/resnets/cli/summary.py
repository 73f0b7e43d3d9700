"""``resnets summary NAME``: the model's layer table (output size, parameters, MACs per stage or block)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "summary",
        help="show a model stage by stage: output sizes, parameters and MACs",
        description="Show a model as the paper's Table 1 does: output size, parameters and exactly counted "
                    "MACs (multiply-adds) per stage, or per block with --depth blocks.",
    )
    p.add_argument("model", metavar="NAME", help="model name, e.g. resnet50 or resnet56 (see the README)")
    p.add_argument("--variant", default=None, help="v1.5 (ImageNet default), v1, d or preact")
    p.add_argument("--input-size", type=int, default=None, metavar="N",
                   help="square input side (default 224 for ImageNet nets, 32 for CIFAR nets)")
    p.add_argument("--num-classes", type=int, default=None, metavar="K", help="classifier outputs")
    p.add_argument("--depth", choices=("stages", "blocks"), default="stages",
                   help="one row per stage (default) or also one per residual block")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import UserError
    from ..models import create_model, model_family
    from ..summary import summary

    family = model_family(args.model)  # unknown name: UserError with suggestions
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be at least 1, got {args.num_classes}")
    # Built on the meta device: shapes and MAC counts without allocating or computing anything.
    with torch.device("meta"):
        model = create_model(args.model, variant=args.variant, num_classes=args.num_classes)
    reduction = int(model.feature_info[-1]["reduction"])  # 32 for ImageNet nets, 4 for CIFAR nets
    size = args.input_size if args.input_size is not None else (224 if family == "imagenet" else 32)
    if size < reduction:
        raise UserError(f"--input-size {size} is too small for {args.model}: it downsamples by {reduction}, "
                        f"so the input must be at least {reduction}x{reduction}")
    result = summary(model, (1, 3, size, size), depth=args.depth)
    print(result.to_json() if args.json else result)
    return 0
