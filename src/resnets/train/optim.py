"""Optimiser and learning-rate schedule: parameter groups, SGD, and a schedule that is a pure function of step."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                 lr_factors: Mapping[nn.Parameter, float] | None = None,
                 norm_bias_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """Parameter groups by weight decay and learning-rate factor (``lr_factor``, 1 unless ``lr_factors`` gives
    one): weights that decay, and (unless ``decay_norm_and_bias``) norm weights and biases that don't.

    A parameter of one dimension (BN scale and shift, every bias) is a "norm or bias" parameter; with
    ``norm_bias_lr_mult`` its factor is multiplied by that and its weight decay divided by it (the speed
    records' bias learning rates: the decay per step, lr times decay, stays the same).
    """
    groups: dict[tuple[bool, float, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            decays = decay_norm_and_bias or p.ndim > 1
            mult = norm_bias_lr_mult if p.ndim <= 1 else 1.0
            groups.setdefault((decays, (lr_factors or {}).get(p, 1.0) * mult, mult), []).append(p)
    order = sorted(groups, key=lambda key: (not key[0], -key[1]))  # decaying first, then by factor
    return [{"params": groups[key], "weight_decay": weight_decay / key[2] if key[0] else 0.0, "lr_factor": key[1]}
            for key in order]


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr_factors: Mapping[nn.Parameter, float] | None = None
                    ) -> torch.optim.Optimizer:
    """SGD with momentum over ``param_groups``, at the config's effective LR (times each group's factor); fused
    when every parameter is on a CUDA device."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias, lr_factors, cfg.norm_bias_lr_mult)
    # on a GPU one fused kernel per step for every parameter (the default, foreach, launches several per group)
    fused = all(p.is_cuda for g in groups for p in g["params"]) and any(g["params"] for g in groups)
    return torch.optim.SGD(groups, lr=cfg.effective_lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           fused=fused or None)


@dataclass
class LRSchedule:
    """The learning rate at every optimiser step, from the config and the run's steps per epoch.

    ``multistep``: ``lr * gamma**k`` after the k-th milestone; ``cosine``: cosine from ``lr`` to
    ``lr * final_lr_fraction``; ``onecycle``: linear rise over the first ``warmup`` fraction of the run, then
    linear fall. Warm-up (multistep, cosine) lasts ``warmup`` schedule units, at ``warmup_lr`` if set, else a
    linear ramp. Milestones and warm-up count iterations or epochs, per ``schedule_unit``.
    """

    kind: str
    lr: float
    total_steps: int
    milestones: list[int]
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_lr: float | None = None
    final_lr_fraction: float = 0.0

    @classmethod
    def from_config(cls, cfg: TrainConfig, total_steps: int, steps_per_epoch: int) -> LRSchedule:
        unit = steps_per_epoch if cfg.schedule_unit == "epochs" else 1
        if cfg.schedule == "onecycle":
            warmup_steps = round(cfg.warmup * total_steps)
        else:
            warmup_steps = round(cfg.warmup * unit)
        return cls(kind=cfg.schedule, lr=cfg.effective_lr, total_steps=total_steps,
                   milestones=[round(m * unit) for m in cfg.milestones], gamma=cfg.gamma,
                   warmup_steps=warmup_steps, warmup_lr=cfg.warmup_lr, final_lr_fraction=cfg.final_lr_fraction)

    def warmup_note(self) -> str | None:
        """One line if the run ends before its warm-up does (its LR only rises, and never decays), else None."""
        if self.total_steps < 1 or self.warmup_steps < self.total_steps:
            return None
        last = self(self.total_steps - 1)
        return (f"the run ({self.total_steps} steps) is no longer than its warm-up ({self.warmup_steps} steps): it "
                f"ends at the warm-up's learning rate {last:.3g} (peak {self.lr:.3g}) and the {self.kind} schedule "
                "never decays it; train longer (--epochs, --iterations) or shorten the warm-up (--set warmup=N)")

    def __call__(self, step: int) -> float:
        """The LR for the update that ends step ``step + 1`` (``step`` counts updates already made)."""
        if self.kind == "onecycle":
            low = self.lr * self.final_lr_fraction
            if step < self.warmup_steps:
                return self.lr * (step + 1) / self.warmup_steps
            rest = max(1, self.total_steps - self.warmup_steps)
            return low + (self.lr - low) * max(0.0, 1 - (step - self.warmup_steps) / rest)
        if step < self.warmup_steps:
            return self.warmup_lr if self.warmup_lr is not None else self.lr * (step + 1) / self.warmup_steps
        if self.kind == "multistep":
            return self.lr * self.gamma ** sum(step >= m for m in self.milestones)
        low = self.lr * self.final_lr_fraction
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return low + (self.lr - low) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR to ``lr`` times its ``lr_factor``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0)
