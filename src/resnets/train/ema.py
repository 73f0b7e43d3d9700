"""Exponential moving average of a model's weights (evaluated and shipped in place of the raw weights)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """``ema = d * ema + (1 - d) * weights`` after every step, with ``d = min(decay, (1 + n) / (10 + n))``.

    Floating-point parameters and buffers (BN running statistics) are averaged; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_tensors = self.module.state_dict()
        floats_ema, floats_new = [], []
        for name, value in model.state_dict().items():
            target = ema_tensors[name]
            if target.is_floating_point():
                floats_ema.append(target)
                floats_new.append(value.detach())
            else:
                target.copy_(value)
        torch._foreach_lerp_(floats_ema, floats_new, 1.0 - d)

    def state_dict(self) -> dict[str, object]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[arg-type]
        self.decay = float(state["decay"])  # type: ignore[arg-type]
