"""``resnets train``: train a ResNet on real images (recipes, checkpoints, resume, metrics, plots)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any

from ..errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a ResNet (default: resnet20 on the shipped sample, a couple of minutes)",
        description="Train a ResNet. A recipe sets every default; --config FILE (JSON/TOML) and flags override "
                    "it; the resolved settings are saved as config.json in the run folder.")
    p.add_argument("--recipe", help="cifar-paper, imagenet-paper, cifar-fast, imagenet-fast, finetune "
                                    "(default: finetune with --init, else the fast one of the model's family)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override any setting (repeatable), e.g. --set milestones=[100,150]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    add_config_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine: relaunches "
                   "this command under torchrun --standalone --nproc-per-node N (gloo on CPU, NCCL on CUDA); "
                   "--batch-size stays the global batch (see docs/distributed.md)")
    p.add_argument("--max-restarts", type=int, default=0, metavar="K",
                   help="with --nproc: restart all processes up to K times after a failure, resuming from the "
                        "last checkpoint (needs --out)")
    p.set_defaults(func=run, parser=p)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for each TrainConfig field that declares one (``option(flag=...)``), storing into the field's name;
    left out, it stays None (the recipe's, the file's or the resumed run's value stands)."""
    from ..train.config import TrainConfig, field_types

    hints = field_types()
    for f in dataclasses.fields(TrainConfig):
        opt = f.metadata["option"]
        if opt.flag is None:
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": opt.help}
        if opt.cli == "on-off":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif opt.cli == "on":
            kwargs["action"] = "store_true"
        else:
            value_type = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
            kwargs.update(metavar=opt.metavar, choices=opt.choices,
                          type=value_type if value_type in (int, float) else
                          _comma_list if typing.get_origin(hints[f.name]) is list else None)
            if opt.cli == "hidden":
                kwargs["help"] = argparse.SUPPRESS
        parser.add_argument(opt.flag, **kwargs)


def _comma_list(text: str) -> list[str]:
    """``conv1,conv2_x`` -> ``["conv1", "conv2_x"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


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
    from ..train import resolve_config, train
    from ..train.config import options

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

    # the settings the user gave: flags typed (the others are None), --image-size's three, --set, --no-progress
    typed = {name: getattr(args, name) for name, opt in options().items()
             if opt.flag and getattr(args, name) is not None}
    if args.image_size is not None:
        if args.image_size < 1:
            raise UserError(f"--image-size must be a positive number of pixels, got {args.image_size}")
        typed.update(fit_images=args.image_size, resize=round(args.image_size * 256 / 224))
    typed.update(parse_set(args.set))
    if args.no_progress:
        typed["progress"] = False
    config = resolve_config(typed, recipe=args.recipe, config_file=args.config, resume=args.resume)
    planned = None
    if config.out and args.resume is None:  # a run folder holds none of what the run reads
        from ..outputs import plan_out

        planned = plan_out(config.out, folder=True, inputs=[("the --data folder", config.data), (
            "the --init weights", config.init), ("the --config file", args.config)])
    # --json: stdout holds the JSON alone; the run's lines go to stderr
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = train(config, resume=args.resume, log=log)
    from ..train.distributed import launched_world

    if launched_world()[0] != 0:  # under torchrun only rank 0 reports
        return 0
    if planned is not None:
        planned.say_created(log)
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "step": result.step, "final": result.final,
                          "best": result.best, "interrupted": result.interrupted}, indent=2))
    elif result.best:
        caveat = "" if result.held_out == "validation" else (
            "; chosen on the test split, so optimistic: --val-split N picks on held-out training images")
        print(f"best {result.held_out} accuracy {result.best['val_acc']:.2f}% (epoch {result.best['epoch']}"
              f"{caveat}); weights {result.best_weights}")
    return 0
