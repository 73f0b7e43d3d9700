"""``resnets search``: the gallery images most similar to query images, from an index made by ``embed``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("search", help="most similar images in an index (cosine similarity)")
    p.add_argument("--index", required=True, metavar="FILE", help="an index written by 'resnets embed'")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="query images (files, folders, globs)")
    p.add_argument("--topk", type=int, default=5, help="results per query (default 5)")
    p.add_argument("--weights", default=None, metavar="FILE|NAME",
                   help="weights file or run folder to embed the queries with (default: the ones the index "
                   "records)")
    p.add_argument("--model", default=None, metavar="NAME", help="architecture of a foreign .pth")
    p.add_argument("--method", choices=("auto", "exact", "ann"), default="auto",
                   help="auto: exact, unless 50k+ gallery images meet 20k+ queries and faiss is installed")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..infer.embed import search
    from ..infer.loading import resolve_weights_path

    failed: list[str] = []

    def report(path: str, message: str) -> None:
        failed.append(path)
        print(f"resnets search: skipped {path}: {message}", file=sys.stderr)

    # a run folder, as every command takes it: its best weights; a weights name loaded (it names its model)
    from ..infer.loading import load_for_inference
    from ..pretrained import resolve_name

    weights = None if args.weights is None else load_for_inference(args.weights, args.model) if resolve_name(
        args.weights, args.model) else str(resolve_weights_path(args.weights, args.model))
    results = search(args.index, args.queries, topk=args.topk, weights=weights, model_name=args.model,
                     method=args.method, on_failure=report)
    if args.format == "json":
        json.dump([{"query": r.query, "hits": [{"path": h.path, "score": round(h.score, 6)} for h in r.hits]}
                   for r in results], sys.stdout, indent=1)
        print()
    else:
        for r in results:
            print(r.query)
            for rank, h in enumerate(r.hits, 1):
                print(f"  {rank:>3}  {h.score:.4f}  {h.path}")
    return 1 if failed else 0
