"""Residual blocks: basic (two 3x3) and bottleneck (1x1, 3x3, 1x1), post- and pre-activation.

Parameter names follow torchvision (``conv1``, ``bn1``, ..., ``downsample``) so its checkpoints load as they are.
With ``residual=False`` a block has no shortcut at all: the paper's "plain" baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad ``x`` (N, C, H, W) as TensorFlow/Keras ``padding="same"`` does: the total that gives
    ceil(size / stride) outputs, split with the odd pixel at the bottom/right."""
    pads: list[int] = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class TFSameConv2d(nn.Module):
    """A square convolution without bias that pads as Keras' strided ``padding="same"``; its one parameter is
    ``weight`` (out, in, k, k), as ``nn.Conv2d``'s. Deliberately not an ``nn.Conv2d``: code that rebuilds
    convolutions from their attributes (batch-norm folding) would lose the padding, so it leaves this one be."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bias: bool = False) -> None:
        super().__init__()
        if bias:
            raise ValueError("TFSameConv2d has no bias (a batch norm follows)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = (kernel_size, kernel_size), (stride, stride)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # as ResNetBase's init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(tf_same_pad(x, self.kernel_size[0], self.stride[0]), self.weight, None, self.stride)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                "padding=keras-same")


class TFSameMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (no built-in padding) padding as Keras' strided ``padding="same"``, with -inf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(tf_same_pad(x, int(self.kernel_size), int(self.stride), float("-inf")))  # type: ignore[arg-type]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, tf_padding: bool = False
            ) -> nn.Conv2d | TFSameConv2d:
    """3x3 convolution with padding 1 and no bias (a batch norm follows); ``tf_padding`` and ``stride > 1``:
    padded as Keras' ``"same"`` (:class:`TFSameConv2d`)."""
    if tf_padding and stride > 1:
        return TFSameConv2d(in_channels, out_channels, 3, stride=stride, bias=False)
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


#: Where option A's zero channels go: ``"after"`` the subsampled identity (resnets' own), or half ``"both"``
#: before and after it (akamaster/pytorch_resnet_cifar10: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``).
SHORTCUT_PADS = ("after", "both")


class ZeroPadShortcut(nn.Module):
    """The paper's option A: identity on the old channels, subsampled by ``stride``, zeros for the new ones.

    ``pad``: where the zeros go (:data:`SHORTCUT_PADS`); ``"both"`` needs an even number of new channels. It is
    part of the function (a net trained with one placement gives other logits with the other), so the model
    card records it (``shortcut_pad``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, pad: str = "after") -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride
        self.pad = check_shortcut_pad(pad, self.extra_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra_channels // 2 if self.pad == "both" else 0
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}, pad={self.pad}"


def check_shortcut_pad(pad: str, extra_channels: int = 0) -> str:
    """``pad`` if it is a :data:`SHORTCUT_PADS` placement that fits ``extra_channels``; else ValueError."""
    if pad not in SHORTCUT_PADS:
        raise ValueError(f"shortcut_pad={pad!r}: use 'after' (resnets') or 'both' (akamaster's CIFAR nets)")
    if pad == "both" and extra_channels % 2:
        raise ValueError(f"shortcut_pad='both' splits the new channels in two halves, not {extra_channels}")
    return pad


def make_shortcut(
    in_channels: int, out_channels: int, stride: int, kind: str, preact: bool = False, projection_bn: bool = True,
    pad: str = "after",
) -> nn.Module | None:
    """The shortcut of a block whose shape changes, or None where the identity fits.

    ``kind``: ``"A"`` zero padding, ``"B"`` 1x1 projection + BN, ``"D"`` 2x2 average pool then 1x1 + BN
    (Bag of Tricks; timm's layout ``downsample.1``/``downsample.2``). Pre-activation blocks project
    without a BN, since the block's input is already normalised. ``projection_bn=False`` (kind ``"B"``): a 1x1
    projection with a bias and no BN (keras.io's CIFAR-10 ``resnet_v1``), ``downsample.0``.
    """
    if stride == 1 and in_channels == out_channels:
        return None
    if kind == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride, pad)
    if preact:
        return nn.Sequential(conv1x1(in_channels, out_channels, stride))
    if kind == "B" and not projection_bn:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True))
    if kind == "B":
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    if kind == "D":
        pool: nn.Module = (
            nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        )
        if not projection_bn:
            raise ValueError("projection_bn=False is a 1x1 projection shortcut's option (shortcut 'B'), not 'D''s")
        return nn.Sequential(pool, conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels))
    raise ValueError(f"unknown shortcut kind {kind!r}; use 'A', 'B' or 'D'")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets); stride on the first. ``projection_bn=False``: a
    projection shortcut is a 1x1 with a bias and no batch norm (see :func:`make_shortcut`); ``shortcut_pad``: where
    an option-A shortcut puts its zero channels."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str = "B",
        residual: bool = True,
        stride_in_1x1: bool = False,
        tf_padding: bool = False,
        projection_bn: bool = True,
        shortcut_pad: str = "after",
    ) -> None:
        super().__init__()
        del stride_in_1x1  # only bottlenecks have a 1x1 to put the stride on
        out_channels = width * self.expansion
        self.conv1 = conv3x3(in_channels, width, stride, tf_padding)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = (make_shortcut(in_channels, out_channels, stride, shortcut, projection_bn=projection_bn,
                                         pad=shortcut_pad) if residual else None)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4). Stride on the 3x3 (v1.5) or on the first 1x1 (v1, the paper's)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str = "B",
        residual: bool = True,
        stride_in_1x1: bool = False,
        tf_padding: bool = False,
        projection_bn: bool = True,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv1x1(in_channels, width, stride if stride_in_1x1 else 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, 1 if stride_in_1x1 else stride, tf_padding)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = (make_shortcut(in_channels, out_channels, stride, shortcut, projection_bn=projection_bn)
                           if residual else None)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice, nothing after the addition.

    The first BN-ReLU (``bn1``) feeds both the residual branch and a projection/option-A shortcut; an
    identity shortcut takes ``x`` itself. ``activate_input=False`` (the net's first unit, whose input is
    the stem's BN-ReLU output, as in the paper's appendix): no ``bn1``, both paths take ``x``.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str = "B",
        residual: bool = True,
        stride_in_1x1: bool = False,
        activate_input: bool = True,
        tf_padding: bool = False,
    ) -> None:
        super().__init__()
        del stride_in_1x1
        out_channels = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels) if activate_input else None
        self.conv1 = conv3x3(in_channels, width, stride, tf_padding)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.residual = residual
        self.downsample = (
            make_shortcut(in_channels, out_channels, stride, shortcut, preact=True) if residual else None
        )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = x if self.bn1 is None else self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(pre))
        return out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU before each of the 1x1, 3x3 (strided) and 1x1 convolutions.

    ``bn1`` and ``activate_input`` as in ``PreActBasicBlock``.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str = "B",
        residual: bool = True,
        stride_in_1x1: bool = False,
        activate_input: bool = True,
        tf_padding: bool = False,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels) if activate_input else None
        self.conv1 = conv1x1(in_channels, width, stride if stride_in_1x1 else 1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, 1 if stride_in_1x1 else stride, tf_padding)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.residual = residual
        self.downsample = (
            make_shortcut(in_channels, out_channels, stride, shortcut, preact=True) if residual else None
        )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = x if self.bn1 is None else self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(pre))
        return out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


class ZeroPadMaxPool2d(nn.MaxPool2d):
    """Max pool over a zero-padded input (Keras' ``ZeroPadding2D`` + ``MaxPooling2D``): unlike PyTorch's -inf
    padding, the zeros count, which matters where the input can be negative (ResNetV2's stem)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2, pad: int = 1) -> None:
        super().__init__(kernel_size, stride)
        self.zero_pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, [self.zero_pad] * 4))


class KerasV2Bottleneck(nn.Module):
    """The block of keras.applications' ResNet50V2/101V2/152V2 (pre-activation, as Keras builds it).

    BN-ReLU first (``bn1``), then 1x1, BN-ReLU, 3x3 (strided), BN-ReLU, 1x1 with a bias; nothing after the
    addition. Shortcut: a 1x1 projection with a bias from the pre-activation where the channels change, a
    stride-``s`` subsample of the input (Keras' 1x1 max pool) where only the size does, else the identity.
    A stage built of these strides in its *last* block (``stride_last``), and the net's last stage not at all.
    """

    expansion = 4
    stride_last = True

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str = "B",
        residual: bool = True,
        stride_in_1x1: bool = False,
        tf_padding: bool = False,
    ) -> None:
        super().__init__()
        del shortcut, stride_in_1x1
        out_channels = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, tf_padding)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=True)
        self.relu = nn.ReLU(inplace=False)
        self.residual = residual
        self.downsample = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True))
                           if residual and in_channels != out_channels else None)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.residual:
            if self.downsample is not None:
                out = out + self.downsample(pre)
            else:
                out = out + (x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x)
        return out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


class KerasCifarV2Bottleneck(nn.Module):
    """The block of keras.io's CIFAR-10 ``resnet_v2`` (pre-activation bottleneck, as that example builds it).

    BN-ReLU (``bn1``; none in the net's first block, whose input is the stem's BN-ReLU: ``activate_input``),
    1x1 (strided), BN-ReLU, 3x3, BN-ReLU, 1x1 with a bias; nothing after the addition. The inner width is the
    stage's input channels (``inner``: 16, 64, 128 in the example), the output ``4 * width`` (64, 128, 256).
    Shortcut: where the shape changes, a 1x1 projection with a bias from the block's input itself (not its
    pre-activation); else the identity. ``_make_stage`` passes ``inner`` (``inner_is_stage_input``).
    """

    expansion = 4
    inner_is_stage_input = True

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: str = "B",
        residual: bool = True,
        stride_in_1x1: bool = True,
        activate_input: bool = True,
        tf_padding: bool = False,
        inner: int | None = None,
    ) -> None:
        super().__init__()
        del shortcut, stride_in_1x1, tf_padding  # one layout: a stride-s 1x1 pads nothing either way
        inner = inner or width
        out_channels = width * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels) if activate_input else None
        self.conv1 = nn.Conv2d(in_channels, inner, 1, stride=stride, bias=False)  # its bias: folded into bn2
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = conv3x3(inner, inner)
        self.bn3 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=True)
        self.relu = nn.ReLU(inplace=False)
        self.residual = residual
        changes = stride != 1 or in_channels != out_channels
        self.downsample = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True))
                           if residual and changes else None)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = x if self.bn1 is None else self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


Block = (BasicBlock | Bottleneck | PreActBasicBlock | PreActBottleneck | KerasV2Bottleneck
         | KerasCifarV2Bottleneck)
