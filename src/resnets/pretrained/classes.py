"""The class names a pretrained head was trained on: ImageNet-1k's 1,000 (shipped in ``resnets/assets``) and
CIFAR-10's ten, in index order."""

from __future__ import annotations

from functools import cache
from importlib import resources

from ..errors import UserError
from .table import CIFAR10_CLASSES


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (shipped in ``resnets/assets``)."""
    text = (resources.files("resnets") / "assets" / "imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise UserError(f"the shipped ImageNet class list has {len(names)} names, not 1000; reinstall resnets")
    return names


def class_names(which: str) -> list[str]:
    """``"imagenet"`` or ``"cifar10"``'s class names."""
    return list(CIFAR10_CLASSES) if which == "cifar10" else list(imagenet_classes())
