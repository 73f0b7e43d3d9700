"""Batch mixing for training: Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019), drawn from one generator."""

from __future__ import annotations

import math

import torch


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup_alpha: float, cutmix_alpha: float, gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup or CutMix (chosen at random when both are on): mixed x, targets a and b, and a's weight."""
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand((), generator=gen) < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = _beta(alpha, gen)
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, (), generator=gen)), int(torch.randint(w, (), generator=gen))
        y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x * lam + x[perm] * (1 - lam)
    return x, y, y[perm], lam


def _beta(alpha: float, gen: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw made from ``gen``: g1 / (g1 + g2) with g1, g2 ~ Gamma(alpha)."""
    a = torch._standard_gamma(torch.full((2,), alpha), generator=gen)
    return float(a[0] / a.sum())
