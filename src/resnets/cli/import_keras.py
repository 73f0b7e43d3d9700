"""``resnets import-keras``: a Keras ResNet (.keras or .h5) as resnets safetensors computing the same function."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import-keras", help="read a Keras ResNet (.keras or .h5) into resnets safetensors, "
                              "exactly")
    p.add_argument("model", metavar="MODEL", help="a Keras model file: a .keras archive or a legacy .h5")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the safetensors to write (default: beside MODEL, .safetensors; replaced only with --force)")
    p.add_argument("--normalization", default=None, metavar="NAME",
                   help="the preprocessing the model was trained with: imagenet, caffe, tf, 0-1, 0-255, cifar, "
                        "or MEAN:STD (RGB, 0..1 scale); default caffe for the keras.applications layout, "
                        "required otherwise")
    p.add_argument("--classes", default=None, metavar="FILE", help="class names, one a line, in index order")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..keras import import_keras

    classes = None
    if args.classes is not None:
        try:
            classes = [ln.strip() for ln in Path(args.classes).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--classes {args.classes}: cannot read it ({exc.__class__.__name__})") from None
    out = args.out if args.out is not None else str(Path(args.model).with_suffix(".safetensors"))
    from ..outputs import plan_out

    planned = plan_out(out, inputs=[("the Keras model", args.model), ("the --classes file", args.classes)],
                       suffixes=(".safetensors",), what="the weights", replace=args.force)  # before the work
    result = import_keras(args.model, out, normalization=args.normalization, classes=classes, force=args.force)
    print(f"read {result.describe()}")
    for note in result.notes:
        print(f"  {note}")
    print(f"wrote {out}")
    planned.say_created()
    return 0
