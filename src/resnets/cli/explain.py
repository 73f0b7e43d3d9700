"""``resnets explain``: a Grad-CAM heat map of what the model looked at, as a PNG."""

from __future__ import annotations

import argparse

from .predict import add_precision_arg, add_weights_args, loaded_weights


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("explain", help="Grad-CAM heat map over an image (PNG)")
    add_weights_args(p)
    p.add_argument("image", metavar="IMAGE", help="an image file")
    p.add_argument("--out", required=True, metavar="PNG", help="where to write the overlay")
    p.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                   help="explain this class (name or index) instead of the predicted one")
    add_precision_arg(p)  # predict's: the same class and probability
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..infer.explain import explain
    from ..infer.loading import resolve_weights_path
    from ..outputs import plan_out

    out = plan_out(args.out, inputs=[("the --weights file", resolve_weights_path(args.weights, args.model)),
                                     ("the image", args.image)],
                   suffixes=(".png",), what="the Grad-CAM overlay")  # before the work

    exp = explain(loaded_weights(args), args.image, out=args.out, class_name=args.class_name, model_name=args.model,
                  precision=args.precision)
    print(f"{exp.path}: {exp.class_name} ({exp.probability:.1%}); Grad-CAM on {exp.layer} -> {exp.out}")
    out.say_created()
    return 0
