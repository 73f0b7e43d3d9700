"""``resnets experiment NAME``: the paper's experiments, end to end (``degradation``: plain nets vs ResNets)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="reproduce one of the paper's experiments (degradation)",
        description="Reproduce an experiment of the paper end to end: train its models, draw its figures, "
                    "compare with its tables.",
    )
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    d = experiments.add_parser(
        "degradation",
        help="plain nets beside ResNets: the paper's Figure 6, Table 6 and Figure 7",
        description="Train plain and residual CIFAR nets of each depth with the same recipe and seed, then "
                    "write the paper's Figure 6 (error curves), the final errors beside its Table 6, and its "
                    "Figure 7 (std of each 3x3 layer's response). Rerun the same command to resume.",
    )
    d.add_argument("--depths", default="20,56", metavar="D,D",
                   help="comma-separated depths among 20,32,44,56,110 (default 20,56)")
    d.add_argument("--kinds", default="plain,resnet", metavar="K,K",
                   help="which nets of each depth: plain, resnet or plain,resnet (default both)")
    d.add_argument("--data", default="sample",
                   help="data set: 'sample' (shipped), a folder with train/ and test/, a CIFAR archive or folder")
    d.add_argument("--out", default=None, metavar="DIR", help="experiment folder (default runs/degradation)")
    d.add_argument("--recipe", default="short", choices=("short", "cifar-paper", "cifar-fast"),
                   help="short (default): the paper's recipe shrunk to ~30 CPU minutes (12 epochs of 10000 "
                        "images, batch 64, LR 0.1 reached by a linear warm-up over the first tenth; where bf16 "
                        "is fast, 36 epochs at batch 128 instead); cifar-paper: the full 64k-iteration "
                        "schedule (a GPU's job)")
    d.add_argument("--epochs", type=float, default=None, metavar="N",
                   help="training length in epochs (the schedule's milestones move in proportion; short "
                        "recipe: 12; --epochs 36 --batch-size 128 shows ResNet-56 ahead of ResNet-20, about "
                        "96 minutes on 2 CPU cores)")
    d.add_argument("--train-images", type=int, default=None, metavar="N",
                   help="train on N images, a fixed seeded subset (0: all; short recipe: 10000)")
    d.add_argument("--test-images", type=int, default=None, metavar="N",
                   help="test on N images, a fixed seeded subset (0: all; short recipe: 2000)")
    d.add_argument("--batch-size", type=int, default=None, metavar="N", help="override the recipe's batch size")
    d.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    d.add_argument("--warmup", type=float, default=None, metavar="F",
                   help="short recipe: the linear LR warm-up's length as a fraction of the run "
                        "(default 0.1)")
    d.add_argument("--seed", type=int, default=0, help="one seed for every model (default 0)")
    d.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    d.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="one number format for every net (auto: bf16 on GPUs; on a CPU what a one-second "
                        "probe times faster, which also picks the short recipe's length)")
    d.add_argument("--response-images", type=int, default=500, metavar="N",
                   help="test images the layer responses are measured on (default 500)")
    d.add_argument("--cache-dir", default=None, help="where decoded data sets are cached")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=run_degradation_command)


def run_degradation_command(args: argparse.Namespace) -> int:
    from ..experiments.degradation import (
        DEFAULT_OUT,
        DegradationOptions,
        parse_depths,
        parse_kinds,
        run_degradation,
    )
    from ..outputs import plan_out

    out = plan_out(args.out or DEFAULT_OUT, folder=True, inputs=[("the --data folder", args.data)])  # before the work

    opts = DegradationOptions(
        depths=parse_depths(args.depths), kinds=parse_kinds(args.kinds), data=args.data,
        out=args.out or DEFAULT_OUT, recipe=args.recipe,
        epochs=args.epochs, train_images=args.train_images, test_images=args.test_images,
        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, seed=args.seed, device=args.device,
        precision=args.precision, response_images=args.response_images, cache_dir=args.cache_dir, progress=not args.no_progress,
    )
    run_degradation(opts, log=lambda msg: print(msg, flush=True))
    out.say_created()
    return 0
