"""The linear probe: a frozen backbone's pooled features computed once, then batches of them for the head.

``probe_data`` turns a run's ``TrainData`` (small images held in memory) into the same data as features: every
training and held-out image goes through the backbone once, in eval mode and without augmentation, and the
head then trains on :class:`FeatureBatches` of those vectors, shuffled per epoch from the run's seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import torch

from ..data.batches import DeviceBatches
from ..data.sources import TrainBatches, TrainData
from ..errors import UserError
from ..models import ResNetBase
from ..runtime import derive_seed


class FeatureBatches(TrainBatches):
    """Batches (features, labels) of precomputed feature vectors: shuffled per epoch from ``(seed, epoch)`` and
    the last partial batch dropped if ``train``, else in order and whole."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool, seed: int = 0,
                 full_size: int = 0) -> None:
        self.features, self.labels, self.batch_size, self.train, self.seed = features, labels, batch_size, train, seed
        self.full_size = full_size  # the images' side the features were computed at
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.train:
            g = torch.Generator().manual_seed(derive_seed("probe", self.seed, self.epoch))
            order = torch.randperm(n, generator=g).to(self.labels.device)
        else:
            order = torch.arange(n, device=self.labels.device)
        for b in range(max(0, start), len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.features[idx], self.labels[idx]


@torch.no_grad()
def features_of(model: ResNetBase, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled pre-logits features (float32, eval mode) and labels of every batch."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for x, y in batches:
        feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
        labels.append(y)
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def probe_data(data: TrainData, model: ResNetBase, batch_size: int, seed: int) -> TrainData:
    """``data`` as features of ``model``'s frozen backbone, computed once: training and held-out batches of
    pooled feature vectors. Small images held in memory only (UserError otherwise)."""
    train, val = data.train, data.val
    if not isinstance(train, DeviceBatches) or not isinstance(val, DeviceBatches):
        raise UserError("--linear-probe computes features of images held in memory (CIFAR, small-image folders) "
                        "in one process; for streamed data or several processes fine-tune with --freeze instead")
    x, y = features_of(model, train.unaugmented())
    vx, vy = features_of(model, val.unaugmented())
    return replace(data, train=FeatureBatches(x, y, batch_size, train=True, seed=seed, full_size=train.full_size),
                   val=FeatureBatches(vx, vy, max(batch_size, 256), train=False), generator=None,
                   description=f"{data.description}; features of the frozen backbone ({x.shape[1]} per image)")
