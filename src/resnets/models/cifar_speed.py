"""The residual nets of the CIFAR-10 speed records: ``resnet9`` and ``resnet18-cifar``.

* :class:`ResNet9` - the DAWNBench net of Myrtle.ai's "How to train your ResNet" (David Page, 2018;
  github.com/davidcpage/cifar10-fast): a 64-channel prep conv, then 128 (max-pool, residual of two convs),
  256 (max-pool), 512 (max-pool, residual of two convs), every conv 3x3 + BN + ReLU without bias, a global max
  pool and a bias-free linear head whose output is scaled by 0.125. 6,573,120 parameters for 10 classes.
* :class:`ResNet18Cifar` - ResNet-18 as CIFAR papers mean it (kuangliu/pytorch-cifar's ``ResNet18``): a 3x3
  stride-1 stem without max-pool, four stages of two basic blocks (64..512 channels, 1x1-projection
  shortcuts with BN where the shape changes), average pool, linear. 11,173,962 parameters for 10 classes.

Both take ``whiten=True``: a fixed first layer (:class:`PatchWhitening`) that whitens every 3x3 input patch with
the inverse square root of the training patches' covariance (set by ``init_whitening``), before the stem conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BasicBlock, conv3x3
from .card import ModelCard
from .resnet import ResNetBase

WHITEN_EPS = 1e-2  # added to the covariance's eigenvalues: keeps near-zero directions from blowing up


class PatchWhitening(nn.Module):
    """A fixed ``k x k`` convolution mapping each input patch ``p`` (C*k*k values) to ``W (p - mean)`` with
    ``W = (cov + eps I) ** -1/2``, the training patches' covariance (ZCA whitening). Its weight and bias are
    buffers: saved with the net, never trained. Zero until :meth:`init_from` sets them."""

    def __init__(self, in_chans: int = 3, kernel: int = 3, eps: float = WHITEN_EPS) -> None:
        super().__init__()
        self.kernel, self.eps = kernel, eps
        dim = in_chans * kernel * kernel
        self.out_channels = dim
        self.register_buffer("weight", torch.zeros(dim, in_chans, kernel, kernel))
        self.register_buffer("bias", torch.zeros(dim))

    @torch.no_grad()
    def init_from(self, images: torch.Tensor) -> None:
        """Set the whitening from ``images`` (N x C x H x W, normalised as the training batches are)."""
        k, dim = self.kernel, self.out_channels
        total = torch.zeros(dim, dtype=torch.float64)
        outer = torch.zeros(dim, dim, dtype=torch.float64)
        count = 0
        for chunk in images.split(256):  # every k x k patch (no padding), summed 256 images at a time
            patches = F.unfold(chunk.to("cpu", torch.float64), k).transpose(1, 2).reshape(-1, dim)
            total += patches.sum(0)
            outer += patches.T @ patches
            count += len(patches)
        mean = total / count
        cov = (outer - count * torch.outer(mean, mean)) / max(1, count - 1)
        values, vectors = torch.linalg.eigh(cov)
        inv_sqrt = vectors @ torch.diag((values.clamp_min(0) + self.eps).rsqrt()) @ vectors.T
        self.weight.copy_(inv_sqrt.view_as(self.weight).to(self.weight))
        self.bias.copy_((-(inv_sqrt @ mean)).to(self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), padding=self.kernel // 2)


def conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias), batch norm, ReLU: ResNet-9's unit."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """``x + f(x)`` with ``f`` two ``conv_bn`` units of ``channels`` (ResNet-9's residual)."""

    residual = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.res1, self.res2 = conv_bn(channels, channels), conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class _WhitenedStem:
    """The optional whitening layer in front of the stem conv; ``init_whitening`` sets it from training images."""

    whiten: PatchWhitening | None

    def _stem_input(self, in_chans: int, whiten: bool) -> int:
        self.whiten = PatchWhitening(in_chans) if whiten else None
        return self.whiten.out_channels if self.whiten is not None else in_chans

    def init_whitening(self, images: torch.Tensor) -> None:
        """Set the whitening layer from training images (N x C x H x W, normalised); ValueError without one."""
        if self.whiten is None:
            raise ValueError("this net has no whitening layer (build it with whiten=True)")
        self.whiten.init_from(images)


class ResNet9(_WhitenedStem, ResNetBase):
    """Myrtle.ai's DAWNBench ResNet-9 (see the module docstring): stages ``layer1`` (128 + residual), ``layer2``
    (256), ``layer3`` (512 + residual), each downsampling by a 2x2 max-pool; global max pool (``avgpool`` by the
    skeleton's name) and ``fc`` (no bias) times ``head_scale``."""

    def __init__(self, num_classes: int = 10, *, in_chans: int = 3, whiten: bool = False,
                 head_scale: float = 0.125, widths: tuple[int, int, int, int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        prep, w1, w2, w3 = widths
        stem_in = self._stem_input(in_chans, whiten)
        self.conv1 = nn.Conv2d(stem_in, prep, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(prep)
        self.relu = nn.ReLU(inplace=True)
        self.stem_names = (["whiten"] if whiten else []) + ["conv1", "bn1", "relu"]
        self.layer1 = nn.Sequential(conv_bn(prep, w1), nn.MaxPool2d(2), Residual(w1))
        self.layer2 = nn.Sequential(conv_bn(w1, w2), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(conv_bn(w2, w3), nn.MaxPool2d(2), Residual(w3))
        self.stage_names = ["layer1", "layer2", "layer3"]
        self.feature_info = [{"module": "stem", "num_chs": prep, "reduction": 1},
                             {"module": "layer1", "num_chs": w1, "reduction": 2},
                             {"module": "layer2", "num_chs": w2, "reduction": 4},
                             {"module": "layer3", "num_chs": w3, "reduction": 8}]
        self.final_bn = None
        self.num_features = w3
        self.avgpool = nn.AdaptiveMaxPool2d(1)
        self.head_scale = head_scale
        self.fc = nn.Linear(w3, num_classes, bias=False)
        self.scale = _Scale(head_scale)
        self.card = ModelCard(None, "v1", num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global max pool, then the classifier scaled by ``head_scale``; ``pre_logits``: the pooled vector."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.scale(self.fc(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes, bias=False)
        self.card.num_classes = num_classes
        self.card.classes = None


class ResNet18Cifar(_WhitenedStem, ResNetBase):
    """ResNet-18 for 32-pixel images (kuangliu/pytorch-cifar): 3x3 stride-1 stem, no max-pool, stages of two
    basic blocks at 64, 128, 256, 512 channels (stride 2 from the second, 1x1 projection + BN shortcuts)."""

    def __init__(self, num_classes: int = 10, *, in_chans: int = 3, whiten: bool = False,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        stem_in = self._stem_input(in_chans, whiten)
        self.conv1 = conv3x3(stem_in, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.stem_names = (["whiten"] if whiten else []) + ["conv1", "bn1", "relu"]
        self._build(BasicBlock, (64, 128, 256, 512), (2, 2, 2, 2), num_classes, stem_width=64, stem_reduction=1,
                    variant="v1", zero_init_residual=zero_init_residual, shortcut="B", residual=True)
