"""``resnets embed``: one L2-normalised feature vector per image, written as a search index."""

from __future__ import annotations

import argparse

from .predict import add_precision_arg, add_weights_args, loaded_weights


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("embed", help="feature vectors of images, as an index for 'resnets search'")
    add_weights_args(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    p.add_argument("--out", required=True, metavar="FILE", help="index file (.safetensors, or .npz)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    add_precision_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..infer.embed import embed
    from ..infer.loading import resolve_weights_path
    from ..outputs import plan_out

    out = plan_out(args.out, inputs=[("the --weights file", resolve_weights_path(args.weights, args.model)),
                                     *(("the input", p) for p in args.paths)],
                   suffixes=(".safetensors", ".npz"), what="the index")  # before the work

    def report(path: str, message: str) -> None:
        print(f"resnets embed: skipped {path}: {message}", file=sys.stderr)

    result = embed(loaded_weights(args), args.paths, out=args.out, model_name=args.model, batch_size=args.batch_size,
                   precision=args.precision, on_failure=report, progress=not args.no_progress)
    print(f"wrote {len(result.paths)} x {result.vectors.shape[1]} embeddings ({result.meta['precision']}) "
          f"to {args.out}")
    out.say_created()
    return 1 if result.failures else 0
