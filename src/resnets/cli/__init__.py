"""The ``resnets`` command: a thin face over the Python API.

Each sub-command lives in its own module ``resnets.cli.<name>`` exposing ``register(subparsers)``, which adds
its parser and sets ``func(args) -> int``. Heavy imports happen inside ``func``; ``register`` calls
``subparsers.add_parser(name, help=...)`` first and imports anything heavy only after it, because ``main`` builds
in full only the parser of the command it runs: the others are listed by name and help alone (their
``register`` stopped at ``add_parser``), so ``resnets --help`` never imports PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import ERROR_FILE_ENV, UserError

# Sub-command modules, in the order ``resnets --help`` lists them.
COMMAND_MODULES = ("demo", "summary", "train", "eval", "shard", "predict", "embed", "search", "explain", "export",
                   "import_keras", "serve", "bench", "experiment", "weights")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``resnets`` parser: every command's in full, or with ``only`` (a command's name, or "" for none) that
    command's in full and the others by name and help alone."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="resnets", description="Every ResNet of the paper: build, see, "
                                     "train, evaluate, predict, export.")
    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        register = importlib.import_module(f"{__name__}.{name}").register
        if only is None or only == _command_name(name):
            register(subparsers)
            continue
        listing = _Listing()
        try:
            register(listing)
        except _Listed:
            pass
        subparsers.add_parser(listing.name, help=listing.help)
    return parser


def _command_name(module: str) -> str:
    """``import_keras`` -> ``import-keras``."""
    return module.replace("_", "-")


def _command_in(argv: list[str]) -> str:
    """The command ``argv`` runs (its first word not an option), or "" if it names none."""
    word = next((a for a in argv if not a.startswith("-")), "")
    return word if word in map(_command_name, COMMAND_MODULES) else ""


class _Listed(Exception):
    """Raised by :class:`_Listing` to stop a ``register`` once its command's name and help are known."""


class _Listing:
    """Stands in for the sub-parsers in a ``register`` call: notes the name and help, then stops the call."""

    name = ""
    help: str | None = None

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        self.name, self.help = name, kwargs.get("help")  # type: ignore[assignment]
        raise _Listed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_in(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except UserError as exc:
        report(f"resnets {args.command}: error: {exc}", record=True)
        return 2
    except KeyboardInterrupt:
        report(f"resnets {args.command}: interrupted")
        return 130
    except BrokenPipeError:  # `resnets predict ... | head -1`: stop quietly, as Unix tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE


def report(message: str, *, record: bool = False) -> None:
    """Print ``message`` on stderr once per run: a rank of ``train --nproc`` leaves it to the launcher (writing
    it to ``$RESNETS_ERROR_FILE`` if ``record`` and no rank did first); under torchrun only rank 0 prints."""
    rank = os.environ.get("RANK")
    error_file = os.environ.get(ERROR_FILE_ENV)
    if rank is not None and error_file:
        if record:
            try:
                fd = os.open(error_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError:  # another rank was first, or the launcher is gone
                return
            with os.fdopen(fd, "w") as fh:
                fh.write(message + "\n")
        return
    if rank in (None, "", "0"):
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
