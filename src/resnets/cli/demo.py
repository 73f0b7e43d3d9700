"""``resnets demo``: the README's main command, end to end on a fresh machine."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the quick start: show ResNet-50, then the shipped-sample workflow")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .summary import run as run_summary

    return run_summary(argparse.Namespace(model="resnet50", variant=None, input_size=224, num_classes=None,
                                          depth="stages", json=False))
