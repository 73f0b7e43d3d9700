"""What fine-tuning adds to a run: the paper's stage names over a model, which stages are frozen when, and
the learning-rate factor of each parameter (discriminative learning rates).

Stages are named as in the paper's Table 1 (and ``resnets summary``): ``conv1`` (the stem), ``conv2_x`` ..
``conv5_x`` (``layer1`` .. ``layer4``; CIFAR nets: ``conv2_x`` .. ``conv4_x``), then the head ``fc``.
``backbone`` means every stage but the head.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..models import ResNetBase

HEAD = "fc"


def stage_names(family: str) -> tuple[str, ...]:
    """The stages below the head, bottom up: ``conv1``, ``conv2_x`` ... (``conv5_x`` ImageNet, ``conv4_x`` CIFAR)."""
    return ("conv1", *(f"conv{i}_x" for i in range(2, 6 if family == "imagenet" else 5)))


def stage_modules(model: ResNetBase) -> dict[str, list[nn.Module]]:
    """Each stage's modules, bottom up, then the head: the stem's layers, ``layer1``... (a pre-activation net's
    final BN with the last stage), ``fc``."""
    stages: dict[str, list[nn.Module]] = {"conv1": [getattr(model, name) for name in model.stem_names]}
    for i, name in enumerate(model.stage_names):
        stages[f"conv{i + 2}_x"] = [getattr(model, name)]
    if model.final_bn is not None:
        stages[f"conv{len(model.stage_names) + 1}_x"].append(model.final_bn)
    stages[HEAD] = [model.fc]
    return stages


def frozen_stages(freeze: Sequence[str], freeze_epochs: int, linear_probe: bool, epoch: int,
                  family: str) -> frozenset[str]:
    """The stages frozen during 0-based ``epoch``: the whole backbone for a linear probe and for the first
    ``freeze_epochs`` epochs (the head trains alone), else those named in ``freeze`` (``backbone``: all)."""
    every = frozenset(stage_names(family))
    if linear_probe or epoch < freeze_epochs or "backbone" in freeze:
        return every
    return frozenset(freeze)


def freeze_summary(model: ResNetBase, frozen: frozenset[str]) -> str:
    """One line: the ``frozen`` stages, bottom up, and how many of the model's parameters still train."""
    stages = stage_modules(model)
    names = [name for name in stages if name in frozen]
    trains = sum(p.numel() for name, modules in stages.items() if name not in frozen
                 for module in modules for p in module.parameters())
    total = sum(p.numel() for p in model.parameters())
    return (f"frozen {', '.join(names)} (weights and BN statistics kept): {trains:,} of {total:,} parameters "
            f"train ({trains / total:.1%})")


def lr_factors(model: ResNetBase, backbone_lr_mult: float | None, lr_stage_decay: float | None
               ) -> dict[nn.Parameter, float]:
    """Each parameter's factor on the learning rate: 1 for the head; ``backbone_lr_mult`` for every stage below
    it; or ``lr_stage_decay`` to the power of the stage's distance from the head (the last stage: once,
    ``conv1``: most). No factor given: 1 everywhere."""
    stages = list(stage_modules(model).items())
    factors: dict[nn.Parameter, float] = {}
    for depth, (name, modules) in enumerate(reversed(stages)):  # depth 0: the head
        if name == HEAD or (backbone_lr_mult is None and lr_stage_decay is None):
            factor = 1.0
        elif backbone_lr_mult is not None:
            factor = backbone_lr_mult
        else:
            factor = lr_stage_decay ** depth  # type: ignore[operator]
        for module in modules:
            for p in module.parameters():
                factors[p] = factor
    return factors
