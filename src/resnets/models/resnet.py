"""The two ResNet families: ImageNet (paper Table 1) and CIFAR (paper section 4.2).

Both share one skeleton, ``stem -> layer1..layerN -> global average pool -> fc``, and one feature API:
``forward_features`` (last map), ``forward_head`` (pool + fc) and ``forward_stages`` (every stage's output).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .blocks import (
    BasicBlock,
    Bottleneck,
    KerasCifarV2Bottleneck,
    KerasV2Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    TFSameConv2d,
    TFSameMaxPool2d,
    ZeroPadMaxPool2d,
    check_shortcut_pad,
    conv3x3,
)
from .card import ModelCard

VARIANTS = ("v1.5", "v1", "d", "preact")
#: Variants that exist to import other frameworks' nets exactly (``resnets.load_keras``), not to train anew:
#: ``"keras-v2"``, keras.applications' ResNet50V2/101V2/152V2 (see ``KerasV2Bottleneck``).
IMPORT_VARIANTS = ("keras-v2",)
ALL_VARIANTS = VARIANTS + IMPORT_VARIANTS
#: The CIFAR nets' import variant: ``"keras-cifar-v2"``, keras.io's CIFAR-10 ``resnet_v2`` (``KerasCifarV2Bottleneck``).
CIFAR_IMPORT_VARIANTS = ("keras-cifar-v2",)

_POST_ACT = {"basic": BasicBlock, "bottleneck": Bottleneck}
_PRE_ACT = {"basic": PreActBasicBlock, "bottleneck": PreActBottleneck}


def block_class(kind: str, variant: str) -> type[nn.Module]:
    """The block class for ``kind`` (``"basic"`` or ``"bottleneck"``) in ``variant``."""
    if variant == "keras-v2":
        if kind != "bottleneck":
            raise ValueError("variant 'keras-v2' (keras.applications ResNetV2) has bottleneck blocks only")
        return KerasV2Bottleneck
    return (_PRE_ACT if variant == "preact" else _POST_ACT)[kind]


TF_PADDING_PLACES = ("conv1", "maxpool", "blocks")


def tf_padding_places(tf_padding: bool | Sequence[str]) -> set[str]:
    """Where Keras-style ``"same"`` padding applies: True means everywhere (``TF_PADDING_PLACES``), False
    nowhere, or a list of places: ``"conv1"`` (the stem conv), ``"maxpool"``, ``"blocks"`` (strided 3x3s)."""
    if isinstance(tf_padding, bool):
        return set(TF_PADDING_PLACES) if tf_padding else set()
    places = set(tf_padding)
    if isinstance(tf_padding, str) or not places <= set(TF_PADDING_PLACES):
        raise ValueError(f"tf_padding={tf_padding!r}: give True, False or a list of {', '.join(TF_PADDING_PLACES)}")
    return places


def _first_unit_options(variant: str, stage: int) -> dict[str, object] | None:
    """The net's first pre-activation unit takes the stem's BN-ReLU as its own (He et al. 2016, appendix)."""
    return {"activate_input": False} if variant in ("preact", "keras-cifar-v2") and stage == 0 else None


class ResNetBase(nn.Module):
    """Shared skeleton: a subclass builds its stem (``stem_names``) and calls ``_build`` for the rest.

    ``card`` (:class:`ModelCard`) is the metadata that travels with the net; ``spec``, ``classes``,
    ``normalization``, ``num_classes`` and ``variant`` read it.
    """

    card: ModelCard
    stem_names: list[str]
    stage_names: list[str]
    feature_info: list[dict[str, int | str]]
    num_features: int
    final_bn: nn.BatchNorm2d | None

    def _build(
        self,
        block: type[nn.Module],
        widths: Sequence[int],
        layers: Sequence[int],
        num_classes: int,
        *,
        stem_width: int,
        stem_reduction: int,
        variant: str,
        zero_init_residual: bool,
        **block_options: object,
    ) -> None:
        """Everything after the stem: ``layer1..layerN``, the final BN (preact), pool, ``fc``, init and card.

        Stage ``i`` is ``layers[i]`` blocks of width ``widths[i]``; the first stage keeps the stem's
        resolution (stride 1), every later one halves it (stride 2). ``stem_reduction``: the stem's output
        stride, the first ``feature_info`` reduction. ``block_options`` go to every block.
        """
        self.card = ModelCard(None, variant, num_classes)
        channels = stem_width
        self.stage_names = []
        self.feature_info = [{"module": "stem", "num_chs": stem_width, "reduction": stem_reduction}]
        stride_last = getattr(block, "stride_last", False)  # Keras' ResNetV2: stages 1..N-1 stride at their end
        reduction = stem_reduction
        for i, (width, blocks) in enumerate(zip(widths, layers, strict=True)):
            stride = (2 if i < len(widths) - 1 else 1) if stride_last else (1 if i == 0 else 2)
            stage, channels = self._make_stage(block, channels, width, blocks, stride,
                                               _first_unit_options(variant, i), **block_options)
            name = f"layer{i + 1}"
            setattr(self, name, stage)
            self.stage_names.append(name)
            reduction *= stride
            self.feature_info.append({"module": name, "num_chs": channels, "reduction": reduction})
        self.final_bn = nn.BatchNorm2d(channels) if variant in ("preact", "keras-v2", "keras-cifar-v2") else None
        self.num_features = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights(zero_init_residual)

    def _make_stage(
        self,
        block: type[nn.Module],
        in_channels: int,
        width: int,
        blocks: int,
        stride: int,
        first_options: dict[str, object] | None = None,
        **block_options: object,
    ) -> tuple[nn.Sequential, int]:
        """``blocks`` blocks, the first strided (the last, for a ``stride_last`` block); ``first_options`` go to
        the first block only."""
        strides = [stride] + [1] * (blocks - 1)
        if getattr(block, "stride_last", False):
            strides.reverse()
        if getattr(block, "inner_is_stage_input", False):  # keras.io's resnet_v2: inner width = stage input
            block_options = {**block_options, "inner": in_channels}
        layers = [block(in_channels, width, strides[0], **block_options, **(first_options or {}))]
        out_channels = width * block.expansion  # type: ignore[attr-defined]
        layers += [block(out_channels, width, s, **block_options) for s in strides[1:]]
        return nn.Sequential(*layers), out_channels

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if hasattr(m, "zero_init_last") and getattr(m, "residual", False):
                    m.zero_init_last()

    @property
    def spec(self) -> dict[str, Any]:
        """The arguments that rebuild this net, ``create_model(**model.spec)`` (read-only: see ``card``)."""
        return self.card.spec

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    @property
    def variant(self) -> str:
        return self.card.variant

    @property
    def classes(self) -> list[str] | None:
        """Class names in index order, or None when unknown."""
        return self.card.classes

    @classes.setter
    def classes(self, value: list[str] | None) -> None:
        self.card.classes = value

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """The input normalisation it was trained with, ``{"mean": [...], "std": [...]}`` in 0..1, or None."""
        return self.card.normalization

    @normalization.setter
    def normalization(self, value: dict[str, list[float]] | None) -> None:
        self.card.normalization = value

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stem_names:
            x = getattr(self, name)(x)
        return x

    def forward_stages(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Every stage's output in one pass: ``stem``, then ``layer1`` ... (pre-activation nets: after final BN)."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.forward_stem(x)
        out["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        if self.final_bn is not None:
            out[self.stage_names[-1]] = torch.relu(self.final_bn(x))
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before pooling (N x num_features x H/32 x W/32 for ImageNet nets)."""
        x = self.forward_stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        if self.final_bn is not None:
            x = torch.relu(self.final_bn(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool and the classifier; ``pre_logits=True`` returns the pooled vector."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh ``num_classes``-way linear layer (for fine-tuning)."""
        self.fc = nn.Linear(self.num_features, num_classes)
        self.card.num_classes = num_classes
        self.card.classes = None  # the old head's names no longer apply


class ResNet(ResNetBase):
    """ImageNet ResNet (paper Table 1): a stem to 1/4 resolution, four stages of 64..512 widths, pool, fc.

    ``variant``: ``"v1.5"`` stride on the bottleneck's 3x3; ``"v1"`` stride on its first 1x1 (the paper);
    ``"d"`` deep 3x3 stem and average-pool shortcuts (Bag of Tricks); ``"keras-v2"`` keras.applications'
    ResNetV2 (imports only: bias-carrying stem conv without BN, zero-padded pool, ``KerasV2Bottleneck``
    stages striding in their last block); ``"preact"`` pre-activation blocks
    (fb.resnet.torch's preresnet.lua: conv-BN-ReLU-maxpool stem shared by ``layer1.0``, final BN-ReLU).
    ``residual=False`` removes every shortcut (the paper's plain networks). ``tf_padding=True``: every strided
    convolution and pool wider than 1x1 pads as Keras/TensorFlow ``padding="same"`` (the odd pixel at the
    bottom/right; :func:`~resnets.models.blocks.tf_same_pad`), for nets imported from Keras; a list of places
    (``"conv1"``, ``"maxpool"``, ``"blocks"``) limits it to those.
    """

    def __init__(
        self,
        block_kind: str,
        layers: Sequence[int],
        num_classes: int = 1000,
        *,
        variant: str = "v1.5",
        in_chans: int = 3,
        zero_init_residual: bool = False,
        residual: bool = True,
        widths: Sequence[int] = (64, 128, 256, 512),
        tf_padding: bool | Sequence[str] = False,
    ) -> None:
        super().__init__()
        if variant not in ALL_VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(ALL_VARIANTS)}")
        tf = tf_padding_places(tf_padding)
        if variant == "keras-v2":
            if tf & {"conv1", "maxpool"}:
                raise ValueError("variant 'keras-v2' pads its stem as keras.applications does (ZeroPadding2D)")
            block = block_class(block_kind, variant)
            self.conv1 = nn.Conv2d(in_chans, widths[0], 7, stride=2, padding=3, bias=True)  # no BN follows
            self.maxpool = ZeroPadMaxPool2d(3, stride=2, pad=1)  # pads the conv's output, negative values and all
            self.stem_names = ["conv1", "maxpool"]
            self._build(block, widths, layers, num_classes, stem_width=widths[0], stem_reduction=4, variant=variant,
                        zero_init_residual=zero_init_residual, residual=residual, tf_padding="blocks" in tf)
            return
        stem_width = widths[0]
        if variant == "d":
            self.conv1: nn.Module = nn.Sequential(
                conv3x3(in_chans, 32, stride=2, tf_padding="conv1" in tf),
                nn.BatchNorm2d(32),
                nn.ReLU(inplace=True),
                conv3x3(32, 32),
                nn.BatchNorm2d(32),
                nn.ReLU(inplace=True),
                conv3x3(32, stem_width),
            )
        elif "conv1" in tf:
            self.conv1 = TFSameConv2d(in_chans, stem_width, 7, stride=2, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = TFSameMaxPool2d(3, stride=2) if "maxpool" in tf else nn.MaxPool2d(3, stride=2, padding=1)
        self.stem_names = ["conv1", "bn1", "relu", "maxpool"]
        self._build(block_class(block_kind, variant), widths, layers, num_classes, stem_width=stem_width,
                    stem_reduction=4, variant=variant, zero_init_residual=zero_init_residual,
                    shortcut="D" if variant == "d" else "B", residual=residual, stride_in_1x1=variant == "v1",
                    tf_padding="blocks" in tf)


class CifarResNet(ResNetBase):
    """CIFAR ResNet (paper section 4.2): 3x3 stem, three stages of 2n 3x3 layers with 16, 32, 64 filters.

    ``shortcut="A"`` (the paper's zero-padding identity, parameter-free) or ``"B"`` (1x1 projection).
    Depth is 6n + 2. ``variant="preact"``: the stem's BN-ReLU is the first unit's, then a final BN-ReLU.
    ``tf_padding``: strided 3x3 convolutions pad as Keras ``padding="same"`` (see ``ResNet``).
    ``projection_bn=False`` (shortcut ``"B"``): projections are 1x1 convolutions with a bias and no batch norm, as
    keras.io's CIFAR-10 ``resnet_v1``. ``variant="keras-cifar-v2"`` (imports only): keras.io's ``resnet_v2``,
    ``KerasCifarV2Bottleneck`` stages with output channels 4x ``widths``, a final BN-ReLU. ``shortcut_pad``
    (shortcut ``"A"``): where the zero channels go, ``"after"`` the identity or half on ``"both"`` sides
    (akamaster/pytorch_resnet_cifar10's nets; see :class:`~resnets.models.blocks.ZeroPadShortcut`).
    """

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        *,
        variant: str = "v1",
        shortcut: str = "A",
        in_chans: int = 3,
        zero_init_residual: bool = False,
        residual: bool = True,
        widths: Sequence[int] = (16, 32, 64),
        tf_padding: bool | Sequence[str] = False,
        projection_bn: bool = True,
        shortcut_pad: str = "after",
    ) -> None:
        super().__init__()
        if variant not in ("v1", "v1.5", "preact") + CIFAR_IMPORT_VARIANTS:
            raise ValueError(f"CIFAR ResNets come in variants 'v1' and 'preact', not {variant!r}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"unknown shortcut {shortcut!r}; use 'A' (zero padding) or 'B' (projection)")
        if not projection_bn and (shortcut != "B" or variant not in ("v1", "v1.5")):
            raise ValueError("projection_bn=False needs shortcut 'B' and a post-activation variant (v1)")
        options: dict[str, object] = {} if projection_bn else {"projection_bn": False}
        if check_shortcut_pad(shortcut_pad) != "after":
            if shortcut != "A" or variant not in ("v1", "v1.5"):
                raise ValueError(f"shortcut_pad={shortcut_pad!r} places option A's zeros: it needs shortcut 'A' and "
                                 "a post-activation variant (v1)")
            options["shortcut_pad"] = shortcut_pad
        block: type[nn.Module] = (KerasCifarV2Bottleneck if variant in CIFAR_IMPORT_VARIANTS
                                  else block_class("basic", variant))
        self.conv1 = conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.stem_names = ["conv1", "bn1", "relu"]
        self._build(block, widths, [blocks_per_stage] * len(widths), num_classes,
                    stem_width=widths[0], stem_reduction=1, variant=variant,
                    zero_init_residual=zero_init_residual, shortcut=shortcut, residual=residual,
                    tf_padding="blocks" in tf_padding_places(tf_padding), **options)
