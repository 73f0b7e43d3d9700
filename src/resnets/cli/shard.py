"""``resnets shard DIR --out SHARDS``: an image folder as WebDataset tar shards, with an ``index.json``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shard",
        help="write an image folder as WebDataset tar shards (for data larger than one disk or folder)",
        description="Write DIR (train/ and val/ or test/ of class folders, or one folder of class folders) as "
                    "WebDataset shards SHARDS/<split>-NNNNNN.tar: each image's original bytes and its class "
                    "index (.cls), plus SHARDS/index.json (class names, shard counts, mean/std). Every image "
                    "is decoded once to check it. Train with: resnets train --data 'SHARDS/train-{...}.tar' "
                    "(the pattern is printed) or --data SHARDS.",
    )
    p.add_argument("dir", metavar="DIR", help="image folder to write")
    p.add_argument("--out", required=True, metavar="SHARDS", help="folder for the shards (new or empty)")
    p.add_argument("--max-count", type=int, default=10000, metavar="N", help="images per shard (default 10000)")
    p.add_argument("--max-size", type=float, default=1024.0, metavar="MB",
                   help="largest shard in MB before a new one starts (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the one-time shuffle of the training split")
    p.add_argument("--no-shuffle", action="store_true", help="keep the training split in folder order")
    p.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable images (listed in the index)")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.shards import write_shards
    from ..outputs import plan_out

    out = plan_out(args.out, folder=True, inputs=[("DIR", args.dir)])  # before the work

    write_shards(args.dir, args.out, max_count=args.max_count, max_bytes=max(1, int(args.max_size * 1e6)),
                 shuffle_seed=None if args.no_shuffle else args.seed, skip_bad_images=args.skip_bad_images,
                 progress=not args.no_progress)
    out.say_created()
    return 0
