"""``resnets train``: train a ResNet on real images (recipes, checkpoints, resume, metrics, plots)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import UserError

# flag dest -> TrainConfig field (flags left at None keep the recipe's value)
_FIELDS = ("model", "variant", "shortcut", "data", "epochs", "iterations", "batch_size", "lr", "out", "device", "precision",
           "compile", "skip_bad_images", "cache_dir", "val_split", "seed", "workers", "ema", "label_smoothing",
           "mixup_alpha", "cutmix_alpha", "accum_steps", "checkpoint_every", "log_every", "tensorboard",
           "stop_after_steps", "train_images", "test_images", "download", "weight_decay", "momentum",
           "channels_last", "zero_init_residual", "sync_bn", "resize_from", "resize_until", "eval_every",
           "deterministic")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a ResNet (default: resnet20 on the shipped sample, a couple of minutes)",
        description="Train a ResNet. A recipe sets every default; --config FILE (JSON/TOML) and flags override "
                    "it; the resolved settings are saved as config.json in the run folder.")
    p.add_argument("--model", help="model name (default resnet20)")
    p.add_argument("--variant", help="architecture variant (v1, v1.5, d, preact)")
    p.add_argument("--shortcut", choices=("A", "B"), help="CIFAR nets: A, zero-padding identity shortcuts "
                   "(default, the paper's); B, 1x1 projections where the shape changes")
    p.add_argument("--data", help="sample (default), cifar10, cifar100, a CIFAR archive, or a folder with "
                                  "train/ and val/ (or test/)")
    p.add_argument("--recipe", help="cifar-paper, imagenet-paper, cifar-fast, imagenet-fast "
                                    "(default: the fast one of the model's family)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override any setting (repeatable), e.g. --set milestones=[100,150]")
    p.add_argument("--epochs", type=float, help="training length in epochs (replaces the recipe's length)")
    p.add_argument("--iterations", type=int, help="training length in optimiser steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (fast recipes: at batch 128 / 256, scaled)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--mixup", dest="mixup_alpha", type=float, metavar="ALPHA")
    p.add_argument("--cutmix", dest="cutmix_alpha", type=float, metavar="ALPHA")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="keep EMA weights")
    p.add_argument("--resize-from", type=int, metavar="PIXELS",
                   help="progressive resizing: train at this image size first, growing to full size (in-memory "
                        "data such as CIFAR; see --resize-until)")
    p.add_argument("--resize-until", type=float, metavar="FRACTION",
                   help="with --resize-from: reach the full size after this fraction of the epochs (default 0.5)")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="image folders: large (streamed) images train on random-resized crops of N and are "
                        "evaluated on the centre N of shorter side N*8/7; small (in-memory) images, e.g. of mixed "
                        "sizes, are scaled to shorter side N and centre-cropped to N x N")
    p.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--accum-steps", type=int, help="split each batch into this many micro-batches")
    p.add_argument("--out", help="run folder (default runs/<model>-<recipe>-<time>)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="deterministic kernels (default: on for CPU, so resume is bit-exact; off for CUDA, "
                        "where cudnn.benchmark picks the fastest kernels)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    p.add_argument("--skip-bad-images", action="store_true", default=None)
    p.add_argument("--cache-dir")
    p.add_argument("--download", action="store_true", default=None, help="download cifar10/cifar100 if missing")
    p.add_argument("--val-split", type=int, metavar="N", help="hold out N training images for validation")
    p.add_argument("--train-images", type=int, metavar="N", help="train on N images only (quick runs)")
    p.add_argument("--test-images", type=int, metavar="N", help="evaluate on N images only")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="loader processes for streamed (ImageNet-size) data")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="also checkpoint every N steps")
    p.add_argument("--log-every", type=int, metavar="STEPS")
    p.add_argument("--eval-every", type=int, metavar="EPOCHS", help="evaluate every N epochs (default 1) and "
                                                                      "after the last")
    p.add_argument("--tensorboard", action="store_true", default=None, help="also log to TensorBoard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-after-steps", type=int, metavar="N", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine: relaunches "
                   "this command under torchrun --standalone --nproc-per-node N (gloo on CPU, NCCL on CUDA); "
                   "--batch-size stays the global batch (see docs/distributed.md)")
    p.add_argument("--max-restarts", type=int, default=0, metavar="K",
                   help="with --nproc: restart all processes up to K times after a failure, resuming from the "
                        "last checkpoint (needs --out)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="with several processes: batch-norm statistics of the global batch (SyncBatchNorm)")
    p.set_defaults(func=run, parser=p)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> settings; values are JSON where they parse (numbers, lists, true), else text, and
    text for fields that hold text; UserError if a value is not of its field's type (``lr=abc``)."""
    from ..train.config import accepts_text, check_types

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UserError(f"--set wants KEY=VALUE, got '{item}'")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out[key] = value if accepts_text(key) and not isinstance(parsed, str | None) else parsed
        try:
            check_types({key: out[key]})
        except UserError as exc:
            raise UserError(f"--set {item}: {exc}") from None
    return out


def torchrun_command(args: argparse.Namespace) -> list[str]:
    """The ``python -m resnets.train.torchrun ... -m resnets train ...`` command that ``--nproc N`` runs
    (torchrun, quiet after a rank's one-line error or Ctrl-C)."""
    if args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {args.nproc}")
    argv: list[str] = []
    for action in args.parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in ("nproc", "max_restarts", "help") or value is None:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return [sys.executable, "-m", "resnets.train.torchrun", "--standalone", "--nproc-per-node", str(args.nproc),
            "--max-restarts", str(args.max_restarts), "-m", "resnets", "train", *argv]


def run(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, resolve_config, train

    if args.nproc is not None:
        import os

        if "TORCHELASTIC_RUN_ID" in os.environ:
            raise UserError("--nproc launches torchrun itself; under torchrun leave it out")
        if args.max_restarts and not (args.out or args.resume):
            raise UserError("--max-restarts resumes from the run folder: give --out")
        from ..outputs import check_out_dir
        from ..train.distributed import launch

        if args.out:
            check_out_dir(args.out)  # before starting the ranks

        return launch(torchrun_command(args))  # torchrun and its ranks stop if this process dies

    overrides = {name: getattr(args, name) for name in _FIELDS}
    if args.image_size is not None:
        if args.image_size < 1:
            raise UserError(f"--image-size must be a positive number of pixels, got {args.image_size}")
        overrides.update(image_size=args.image_size, fit_images=args.image_size,
                         resize=round(args.image_size * 256 / 224))
    overrides.update(parse_set(args.set))
    if args.no_progress or not sys.stderr.isatty():
        overrides["progress"] = False if args.no_progress else None
    # --json: stdout holds the JSON alone; the run's lines go to stderr
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if args.resume:
        from ..train.config import load_config_file

        if args.config:
            overrides = {**load_config_file(args.config), **{k: v for k, v in overrides.items() if v is not None}}
        if args.recipe:
            overrides["recipe"] = args.recipe
        given = {k for k, v in overrides.items() if v is not None and k in TrainConfig.__dataclass_fields__}
        config = TrainConfig(**{k: overrides[k] for k in given})
        result = train(config, resume=args.resume, log=log, given=given - {"progress"})
    else:
        result = train(resolve_config(overrides, recipe=args.recipe, config_file=args.config), log=log)
    from ..train.distributed import launched_world

    if launched_world()[0] != 0:  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "step": result.step, "final": result.final,
                          "best": result.best, "interrupted": result.interrupted}, indent=2))
    elif result.best:
        caveat = "" if result.held_out == "validation" else (
            "; chosen on the test split, so optimistic: --val-split N picks on held-out training images")
        print(f"best {result.held_out} accuracy {result.best['val_acc']:.2f}% (epoch {result.best['epoch']}"
              f"{caveat}); weights {result.best_weights}")
    return 0
