"""The ``resnets`` command: a thin face over the Python API.

Each sub-command lives in its own module ``resnets.cli.<name>`` exposing ``register(subparsers)``, which adds
its parser and sets ``func(args) -> int``. Heavy imports happen inside ``func``, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

# Sub-command modules, in the order ``resnets --help`` lists them.
COMMAND_MODULES = ("demo", "summary", "train", "eval", "shard", "predict", "embed", "search", "explain", "export",
                   "bench", "experiment")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="resnets", description="Every ResNet of the paper: build, see, "
                                     "train, evaluate, predict, export.")
    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"resnets {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnets {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
