"""The input normalisations of the standard data sets, written once: per-channel mean and std in 0..1 (RGB)."""

from __future__ import annotations

#: Data set -> per-channel ``mean`` and ``std`` of its training images, in 0..1, RGB order.
NORMALIZATION: dict[str, dict[str, tuple[float, float, float]]] = {
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
}

IMAGENET_MEAN = NORMALIZATION["imagenet"]["mean"]
IMAGENET_STD = NORMALIZATION["imagenet"]["std"]
CIFAR_MEAN = NORMALIZATION["cifar10"]["mean"]
CIFAR_STD = NORMALIZATION["cifar10"]["std"]
