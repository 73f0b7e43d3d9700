"""Print the markdown table of parameters and MACs for every ImageNet depth x variant, and the CIFAR nets.

Every number is counted by ``resnets.summary`` (MACs from ``FlopCounterMode``), on models built on the meta
device, so the script takes seconds and allocates no weights. Usage: ``.venv/bin/python benchmarks/model_table.py``.
"""

from __future__ import annotations

import torch

from resnets import create_model, summary
from resnets.models import CIFAR_DEPTHS, IMAGENET_DEPTHS

VARIANTS = ("v1.5", "v1", "d", "preact")


def count(name: str, size: int, **kwargs: object) -> tuple[int, int]:
    """(parameters, MACs) of ``name`` for one ``size`` x ``size`` image."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    s = summary(model, (1, 3, size, size))
    return s.total_params, s.total_macs


def imagenet_table() -> list[str]:
    header = "| model | " + " | ".join(f"{v} params | {v} GMACs" for v in VARIANTS) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(VARIANTS))]
    for depth in IMAGENET_DEPTHS:
        cells = []
        for variant in VARIANTS:
            params, macs = count(f"resnet{depth}", 224, variant=variant)
            cells += [f"{params:,}", f"{macs / 1e9:.3f}"]
        lines.append(f"| resnet{depth} | " + " | ".join(cells) + " |")
    return lines


def cifar_table() -> list[str]:
    lines = ["| model | n | option A params | option B params | MMACs |", "|---|---|---|---|---|"]
    for depth, n in CIFAR_DEPTHS.items():
        params_a, macs = count(f"resnet{depth}", 32)
        params_b, _ = count(f"resnet{depth}", 32, shortcut="B")
        lines.append(f"| resnet{depth} | {n} | {params_a:,} | {params_b:,} | {macs / 1e6:.1f} |")
    return lines


def main() -> None:
    print("ImageNet nets, 1x3x224x224 input (MACs = multiply-adds = FLOPs / 2):\n")
    print("\n".join(imagenet_table()))
    print("\nCIFAR nets, 1x3x32x32 input:\n")
    print("\n".join(cifar_table()))


if __name__ == "__main__":
    main()
