"""resnets ResNets as Keras models: a functional graph in keras.applications' layout and names, the same weights.

Covered: the post-activation nets, ImageNet (variants v1 and v1.5, ``blocks=`` and ``tf_padding`` included)
and CIFAR (option A or B shortcuts), and the plain baselines. The Keras model takes what the resnets model
takes, channels last: an N x H x W x C image already normalised (the weights' mean and std), and returns the
logits. Option A's zero-padding shortcut becomes a frozen 1x1 convolution of ones and zeros (exact).
The file is written to a temporary path, loaded back with Keras' safe loader and compared with PyTorch on
random inputs; it is renamed into place only when the outputs agree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..models.blocks import BasicBlock, Bottleneck, TFSameConv2d, ZeroPadShortcut
from ..models.resnet import CifarResNet, ResNet, ResNetBase
from . import require_keras

if TYPE_CHECKING:
    from ..infer.export import ExportResult
    from ..infer.loading import LoadedModel


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


class _Writer:
    """Builds the Keras graph layer by layer, keeping each layer's weights to set once it is built."""

    def __init__(self, keras: Any) -> None:
        self.keras = keras
        self.L = keras.layers
        self.pending: list[tuple[Any, list[np.ndarray]]] = []

    def conv(self, x: Any, conv: nn.Conv2d, name: str) -> Any:
        """``conv`` as Keras: stride-1 or tf-padded 'same', else ZeroPadding2D + 'valid' (PyTorch's padding)."""
        k, s = conv.kernel_size[0], conv.stride[0]
        pad = 0 if isinstance(conv, TFSameConv2d) else int(conv.padding[0])  # type: ignore[index]
        if isinstance(conv, TFSameConv2d) or (s == 1 and pad == (k - 1) // 2):
            padding = "same"
        else:
            if pad:
                x = self.L.ZeroPadding2D(pad, name=f"{name}_pad")(x)
            padding = "valid"
        layer = self.L.Conv2D(conv.out_channels, k, strides=s, padding=padding, use_bias=False, name=name)
        self.pending.append((layer, [_np(conv.weight).transpose(2, 3, 1, 0)]))  # OIHW -> HWIO
        return layer(x)

    def bn(self, x: Any, bn: nn.BatchNorm2d, name: str) -> Any:
        layer = self.L.BatchNormalization(epsilon=bn.eps, momentum=1 - (bn.momentum or 0.1), name=name)
        self.pending.append((layer, [_np(bn.weight), _np(bn.bias), _np(bn.running_mean),  # type: ignore[arg-type]
                                     _np(bn.running_var)]))  # type: ignore[arg-type]
        return layer(x)

    def relu(self, x: Any, name: str) -> Any:
        return self.L.Activation("relu", name=name)(x)

    def shortcut(self, x: Any, down: nn.Module, name: str) -> Any:
        if isinstance(down, ZeroPadShortcut):
            cin = int(x.shape[-1])
            kernel = np.zeros((1, 1, cin, cin + down.extra_channels), np.float32)
            kernel[0, 0, np.arange(cin), np.arange(cin)] = 1.0
            layer = self.L.Conv2D(cin + down.extra_channels, 1, strides=down.stride, use_bias=False,
                                  trainable=False, name=f"{name}_0_zeropad")
            self.pending.append((layer, [kernel]))
            return layer(x)
        if not (isinstance(down, nn.Sequential) and len(down) == 2):
            raise UserError(f"Keras export: unsupported shortcut {type(down).__name__}")
        conv, bn = down[0], down[1]
        return self.bn(self.conv(x, conv, f"{name}_0_conv"), bn, f"{name}_0_bn")

    def block(self, x: Any, block: nn.Module, name: str) -> Any:
        if isinstance(block, Bottleneck):
            parts = [(block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)]
        elif isinstance(block, BasicBlock):
            parts = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        else:
            raise UserError(f"Keras export covers post-activation blocks, not {type(block).__name__}")
        y = x
        for k, (conv, bn) in enumerate(parts, start=1):
            y = self.bn(self.conv(y, conv, f"{name}_{k}_conv"), bn, f"{name}_{k}_bn")
            if k < len(parts):
                y = self.relu(y, f"{name}_{k}_relu")
        if block.residual:
            short = x if block.downsample is None else self.shortcut(x, block.downsample, name)
            y = self.L.Add(name=f"{name}_add")([short, y])
        return self.relu(y, f"{name}_out")

    def build(self, model: ResNetBase) -> Any:
        keras, L = self.keras, self.L
        card = model.card
        inp = keras.Input((None, None, int(model.conv1.in_channels)), name="images")  # type: ignore[union-attr]
        x = self.conv(inp, model.conv1, "conv1_conv")  # type: ignore[arg-type]
        x = self.relu(self.bn(x, model.bn1, "conv1_bn"), "conv1_relu")  # type: ignore[arg-type]
        if isinstance(model, ResNet):
            pool = model.maxpool
            if isinstance(pool, nn.MaxPool2d) and int(pool.padding) == 1:  # type: ignore[arg-type]
                x = L.ZeroPadding2D(1, name="pool1_pad")(x)  # zeros equal -inf here: the input is post-ReLU
                x = L.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
            else:
                x = L.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)
        for i, stage_name in enumerate(model.stage_names):
            for j, block in enumerate(getattr(model, stage_name)):
                x = self.block(x, block, f"conv{i + 2}_block{j + 1}")
        x = L.GlobalAveragePooling2D(name="avg_pool")(x)
        dense = L.Dense(card.num_classes, name="logits")
        self.pending.append((dense, [_np(model.fc.weight).T, _np(model.fc.bias)]))
        out = dense(x)
        net = keras.Model(inp, out, name=card.name or "resnet")
        for layer, weights in self.pending:
            layer.set_weights(weights)
        return net


def to_keras(model: ResNetBase) -> Any:
    """A Keras functional model computing ``model`` (eval mode) on channels-last input; see the module doc."""
    keras = require_keras()
    card = model.card
    label = f"{card.name or type(model).__name__} ({card.variant})"
    if not isinstance(model, ResNet | CifarResNet) or card.variant not in ("v1", "v1.5"):
        raise UserError(f"Keras export covers the v1 and v1.5 ResNets (post-activation), not {label}: "
                        "ResNet-D's average-pool shortcuts and pre-activation nets are not written")
    if isinstance(model, ResNet) and not isinstance(model.conv1, nn.Conv2d):
        raise UserError(f"Keras export: {label} has a deep stem; not written")
    return _Writer(keras).build(model.eval())


def keras_logits(net: Any, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run a Keras model on NCHW tensors (transposed to NHWC); float32 logits as torch tensors."""
    keras = require_keras()
    outs = []
    for x in inputs:
        y = net(x.permute(0, 2, 3, 1).contiguous().numpy(), training=False)
        outs.append(torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(y), dtype=np.float32)))
    return outs


def export_keras(weights: str | os.PathLike[str] | LoadedModel, *, out: str | os.PathLike[str] | None = None,
                 model_name: str | None = None, force: bool = False, check_size: int | None = None) -> ExportResult:
    """Write ``weights``' model as a ``.keras`` file (default: beside the weights), checked: loaded back with
    Keras' safe loader and compared with PyTorch on random inputs (side ``check_size``, default the family's
    input size) at batch sizes 1 and 3; ExportCheckError (nothing written) beyond ``ATOL + RTOL * max |logits|``.
    A default-named file that exists is replaced only with ``force``."""
    from ..infer.export import ATOL, CHECK_BATCHES, RTOL, ExportCheckError, ExportResult
    from ..infer.loading import load_for_inference
    from ..outputs import atomic_write, check_out_file

    keras = require_keras()
    loaded = load_for_inference(weights, model_name)
    model = loaded.model.eval()
    out_path = Path(out) if out is not None else Path(loaded.source).with_suffix(".keras")
    if out_path.suffix != ".keras":
        raise UserError(f"--out {out_path}: a Keras model file must end in .keras")
    check_out_file(out_path, replace=force or out is not None, suffix=".keras")
    net = to_keras(model)
    size = check_size or loaded.input_size
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(b, int(net.input_shape[-1]), size, size, generator=gen) for b in CHECK_BATCHES]
    with torch.inference_mode():
        refs = [model(x) for x in inputs]
    with tempfile.TemporaryDirectory(prefix="resnets-keras-") as tmp:
        written = Path(tmp) / "model.keras"
        net.save(str(written))
        back = keras.saving.load_model(str(written), compile=False, safe_mode=True)
        outs = keras_logits(back, inputs)
        diff = max(float((o - r).abs().max()) for o, r in zip(outs, refs, strict=True))
        ref_max = max(float(r.abs().max()) for r in refs)
        if not diff <= ATOL + RTOL * ref_max:
            raise ExportCheckError(f"keras outputs differ from PyTorch by up to {diff:.3g} "
                                   f"(allowed {ATOL + RTOL * ref_max:.3g}); nothing written")
        atomic_write(out_path, lambda dest: shutil.copyfile(written, dest))
    return ExportResult(str(out_path), "keras", diff, ref_max, CHECK_BATCHES)
