"""Exponential moving average of a model's weights (evaluated and shipped in place of the raw weights)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """``ema = d * ema + (1 - d) * weights`` at every ``update``, with ``d = min(decay, (1 + n) / (10 + n))``.

    Floating-point parameters and buffers (BN running statistics) are averaged; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._paired: tuple[nn.Module, tuple[list[torch.Tensor], ...]] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        floats_ema, floats_new, ints_ema, ints_new = self._pairs(model)
        torch._foreach_lerp_(floats_ema, floats_new, 1.0 - d)
        if ints_ema:
            torch._foreach_copy_(ints_ema, ints_new)

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], ...]:
        """The (EMA, model) tensors, floating-point and the rest, matched by name once per model: a step
        updates them in place with two foreach calls, rebuilding no state_dict."""
        if self._paired is None or self._paired[0] is not model:
            ema_tensors = self.module.state_dict(keep_vars=True)
            lists: tuple[list[torch.Tensor], ...] = ([], [], [], [])
            for name, value in model.state_dict(keep_vars=True).items():
                target, value = ema_tensors[name].data, value.data
                k = 0 if target.is_floating_point() else 2
                lists[k].append(target)
                lists[k + 1].append(value)
            self._paired = (model, lists)
        return self._paired[1]

    def state_dict(self) -> dict[str, object]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[arg-type]
        self.decay = float(state["decay"])  # type: ignore[arg-type]
