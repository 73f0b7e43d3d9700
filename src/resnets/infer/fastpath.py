"""The fast CPU inference path: batch norm folded into convolutions, channels_last, bf16 where native.

``fold_batchnorm`` is exact in float32 (to rounding). ``FastModel`` runs a folded, channels_last copy of a
model; precision ``"auto"`` is bf16 autocast where the probe (``hardware.cpu_precision``) timed the folded
model faster in bf16 than in float32 on this CPU, and float32 elsewhere. ``compile=True`` adds
``torch.compile`` with inductor freezing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..errors import UserError
from ..models.blocks import BasicBlock, Bottleneck
from ..models.resnet import ResNetBase
from ..runtime import autocast_context, autocast_dtype, choose_precision

PRECISIONS = ("auto", "bf16", "fp32")
_CPU = torch.device("cpu")


def cpu_inference_precision(precision: str, model: nn.Module | None = None, *, input_size: int = 224,
                            model_key: str = "model") -> str:
    """``"auto"`` to what the probe found faster for ``model`` in inference on this CPU (``"fp32"`` without a
    model); ``"bf16"`` and ``"fp32"`` checked and returned (see ``runtime.choose_precision``)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return choose_precision(precision, torch.device("cpu"), model, image_size=input_size, model_key=model_key)


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode (computed in float64)."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    with torch.no_grad():
        fused.weight.copy_((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        fused.bias.copy_(((b - mean) * scale + beta).to(conv.weight.dtype))
    return fused.to(conv.weight.device)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every batch norm that directly follows a convolution folded into it.

    Folded: the stem (``conv1``/``bn1``), the convolutions of post-activation blocks, and ``Conv2d, BatchNorm2d``
    pairs inside ``nn.Sequential`` (projection shortcuts, the deep stem). Pre-activation batch norms, which
    precede their convolution, stay as they are.
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            _fold_sequential(module)
        if isinstance(module, (BasicBlock, Bottleneck)) or _is_torchvision_block(module):
            for i in (1, 2, 3):
                _fold_pair(module, f"conv{i}", f"bn{i}")
        if isinstance(module, ResNetBase) or _is_torchvision_resnet(module):
            stem = getattr(module, "conv1", None)
            if isinstance(stem, nn.Sequential) and isinstance(getattr(module, "bn1", None), nn.BatchNorm2d):
                last = len(stem) - 1
                if isinstance(stem[last], nn.Conv2d):
                    stem[last] = fuse_conv_bn(stem[last], module.bn1)
                    module.bn1 = nn.Identity()
            else:
                _fold_pair(module, "conv1", "bn1")
    return model


def _fold_pair(module: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
        setattr(module, conv_name, fuse_conv_bn(conv, bn))
        setattr(module, bn_name, nn.Identity())


def _fold_sequential(seq: nn.Sequential) -> None:
    for i in range(len(seq) - 1):
        if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
            seq[i] = fuse_conv_bn(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()


def _is_torchvision_block(module: nn.Module) -> bool:
    return type(module).__module__ == "torchvision.models.resnet" and type(module).__name__ in (
        "BasicBlock", "Bottleneck")


def _is_torchvision_resnet(module: nn.Module) -> bool:
    return type(module).__module__ == "torchvision.models.resnet" and type(module).__name__ == "ResNet"


class _Embedder(nn.Module):
    """``forward`` returning the pooled pre-logits vector of a ResNet (for compiling the embedding path)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


class FastModel:
    """A model prepared for fast CPU inference; call it for float32 logits, ``embed`` for pooled features."""

    def __init__(self, model: nn.Module, precision: str = "auto", *, compile: bool = False,
                 fold: bool = True, channels_last: bool = True, input_size: int = 224,
                 model_key: str = "model") -> None:
        cpu_inference_precision(precision)  # a wrong name fails before the model is copied
        self.channels_last = channels_last
        self.compiled = compile
        net = fold_batchnorm(model) if fold else copy.deepcopy(model).eval()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.model = net
        # ``auto`` times this folded copy, as it will run (folding is per model; the key names the layout)
        key = f"{model_key} folded" if fold else model_key
        self.precision = cpu_inference_precision(precision, net, input_size=input_size, model_key=key)
        self._logits: Callable[[torch.Tensor], torch.Tensor] = net
        self._embed: Callable[[torch.Tensor], torch.Tensor] = _Embedder(net)
        if compile:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            self._logits = torch.compile(net)
            self._embed = torch.compile(self._embed)

    def _run(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast_context(_CPU, autocast_dtype(self.precision)):
            return fn(x).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (float32) for a float N x 3 x H x W batch."""
        return self._run(self._logits, x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits features (float32), N x num_features."""
        return self._run(self._embed, x)

    def describe(self) -> str:
        """One line: what this path does."""
        parts = ["BN folded", "channels_last" if self.channels_last else "contiguous", self.precision]
        if self.compiled:
            parts.append("torch.compile (inductor, freezing)")
        return ", ".join(parts)
