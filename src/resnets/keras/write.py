"""resnets ResNets as Keras models: a functional graph in keras.applications' layout and names, the same weights.

Covered: the post-activation nets, ImageNet (variants v1 and v1.5, ``blocks=`` and ``tf_padding`` included)
and CIFAR (option A or B shortcuts, with or without the projection's batch norm), and the plain baselines. By
default the Keras model takes what the resnets model takes, channels last: an N x H x W x C image already
normalised (the weights' mean and std), and returns the logits. ``preprocessing`` (``caffe``, ``tf``,
``torch``: keras.applications' ``preprocess_input`` modes) makes it take that input instead, and ``softmax``
return probabilities: the contract of a Keras pipeline. The conversion is a per-channel ``Rescaling`` before
conv1 (none where it is the identity) and, for caffe's BGR, conv1's input channels reversed; both exact.
Option A's zero-padding shortcut becomes a frozen 1x1 convolution of ones and zeros (exact).
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
from .convert import CAFFE_MEAN_BGR
from .read import require_keras

if TYPE_CHECKING:
    from ..infer.export_result import ExportResult
    from ..loading import LoadedModel


#: What the exported Keras model may take: the resnets model's own normalised input, or a ``preprocess_input`` mode.
KERAS_PREPROCESSING = ("none", "caffe", "tf", "torch")
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # Keras' "torch" mode


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def keras_input(images: np.ndarray, preprocessing: str, mean: Any, std: Any) -> np.ndarray:
    """0..255 RGB images (N, H, W, 3; float) as a Keras model exported with ``preprocessing`` takes them:
    ``none`` the weights' own normalisation, else keras.applications' ``preprocess_input`` mode."""
    x = np.asarray(images, np.float64)
    if preprocessing == "caffe":
        return (x[..., ::-1] - np.array(CAFFE_MEAN_BGR)).astype(np.float32)
    if preprocessing == "tf":
        return (x / 127.5 - 1.0).astype(np.float32)
    if preprocessing == "torch":
        return ((x / 255.0 - np.array(_TORCH_MEAN)) / np.array(_TORCH_STD)).astype(np.float32)
    if preprocessing == "none":
        return ((x / 255.0 - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
    raise UserError(f"unknown Keras preprocessing {preprocessing!r}; choose one of {', '.join(KERAS_PREPROCESSING)}")


def input_affine(preprocessing: str, mean: Any, std: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(scale, offset, reverse)``: the resnets input is ``u * scale + offset`` per channel of the Keras input
    ``u`` (in its own channel order), then channels reversed when ``reverse`` (caffe's BGR); float64."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if preprocessing == "none":
        return np.ones(len(mean)), np.zeros(len(mean)), False
    if len(mean) != 3:
        raise UserError(f"--keras-preprocessing {preprocessing} is for RGB images; this net takes {len(mean)} "
                        "channels (use none)")
    if preprocessing == "caffe":  # u = bgr255 - m_bgr: x01 = (u + m_bgr) / 255, in BGR order
        m, s = mean[::-1], std[::-1]
        return 1.0 / (255.0 * s), (np.array(CAFFE_MEAN_BGR) / 255.0 - m) / s, True
    if preprocessing == "tf":  # u = x255 / 127.5 - 1: x01 = (u + 1) / 2
        return 0.5 / std, (0.5 - mean) / std, False
    if preprocessing == "torch":  # u = (x01 - m_t) / s_t
        return np.array(_TORCH_STD) / std, (np.array(_TORCH_MEAN) - mean) / std, False
    raise UserError(f"unknown Keras preprocessing {preprocessing!r}; choose one of {', '.join(KERAS_PREPROCESSING)}")


def contract(preprocessing: str, softmax: bool, mean: Any, std: Any, num_classes: int, size: int) -> str:
    """What an exported Keras model takes and returns, in one line."""
    takes = {
        "none": (f"(x / 255 - mean) / std, mean {_floats(mean)}, std {_floats(std)} (the resnets weights' "
                 "normalisation), RGB"),
        "caffe": "keras.applications.resnet.preprocess_input(x) (mode 'caffe': BGR, ImageNet means subtracted)",
        "tf": "x / 127.5 - 1 (preprocess_input mode 'tf'), RGB",
        "torch": "(x / 255 - ImageNet mean) / ImageNet std (preprocess_input mode 'torch'), RGB",
    }[preprocessing]
    returns = (f"softmax probabilities over {num_classes} classes" if softmax
               else f"logits over {num_classes} classes (no softmax)")
    return (f"the Keras model takes {takes}, channels last (N x H x W x 3; x: the 0..255 pixels); returns "
            f"{returns}; trained or imported at {size}x{size}, so feed it that size")


def _floats(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


class _Writer:
    """Builds the Keras graph layer by layer, keeping each layer's weights to set once it is built."""

    def __init__(self, keras: Any) -> None:
        self.keras = keras
        self.L = keras.layers
        self.pending: list[tuple[Any, list[np.ndarray]]] = []

    def conv(self, x: Any, conv: nn.Conv2d, name: str, reverse_input: bool = False) -> Any:
        """``conv`` as Keras: stride-1 or tf-padded 'same', else ZeroPadding2D + 'valid' (PyTorch's padding);
        with its bias if it has one; ``reverse_input``: its input channels in reverse order (BGR input)."""
        k, s = conv.kernel_size[0], conv.stride[0]
        pad = 0 if isinstance(conv, TFSameConv2d) else int(conv.padding[0])  # type: ignore[index]
        if isinstance(conv, TFSameConv2d) or (s == 1 and pad == (k - 1) // 2):
            padding = "same"
        else:
            if pad:
                x = self.L.ZeroPadding2D(pad, name=f"{name}_pad")(x)
            padding = "valid"
        bias = getattr(conv, "bias", None)
        layer = self.L.Conv2D(conv.out_channels, k, strides=s, padding=padding, use_bias=bias is not None, name=name)
        kernel = _np(conv.weight).transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if reverse_input:
            kernel = np.ascontiguousarray(kernel[:, :, ::-1])
        self.pending.append((layer, [kernel] + ([_np(bias)] if bias is not None else [])))
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
        if isinstance(down, nn.Sequential) and len(down) == 1 and isinstance(down[0], nn.Conv2d):
            return self.conv(x, down[0], f"{name}_0_conv")  # a projection without batch norm (projection_bn=False)
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

    def build(self, model: ResNetBase, preprocessing: str = "none", softmax: bool = False,
              normalization: tuple[Any, Any] = ((0.0,) * 3, (1.0,) * 3)) -> Any:
        keras, L = self.keras, self.L
        card = model.card
        inp = keras.Input((None, None, int(model.conv1.in_channels)), name="images")  # type: ignore[union-attr]
        scale, offset, reverse = input_affine(preprocessing, *normalization)
        x = inp
        if not (np.allclose(scale, 1, rtol=0, atol=1e-7) and np.allclose(offset, 0, rtol=0, atol=1e-7)):
            x = L.Rescaling([float(v) for v in scale], offset=[float(v) for v in offset], name="preprocess")(x)
        x = self.conv(x, model.conv1, "conv1_conv", reverse_input=reverse)  # type: ignore[arg-type]
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
        dense = L.Dense(card.num_classes, activation="softmax" if softmax else None,
                        name="predictions" if softmax else "logits")
        self.pending.append((dense, [_np(model.fc.weight).T, _np(model.fc.bias)]))
        out = dense(x)
        net = keras.Model(inp, out, name=card.name or "resnet")
        for layer, weights in self.pending:
            layer.set_weights(weights)
        return net


def to_keras(model: ResNetBase, preprocessing: str = "none", softmax: bool = False,
             normalization: tuple[Any, Any] | None = None) -> Any:
    """A Keras functional model computing ``model`` (eval mode) on channels-last input; see the module doc.
    ``normalization``: ``(mean, std)`` the net's input is normalised with (default: its card's), which a
    ``preprocessing`` converts to."""
    keras = require_keras()
    card = model.card
    label = f"{card.name or type(model).__name__} ({card.variant})"
    if not isinstance(model, ResNet | CifarResNet) or card.variant not in ("v1", "v1.5"):
        raise UserError(f"Keras export covers the v1 and v1.5 ResNets (post-activation), not {label}: "
                        "ResNet-D's average-pool shortcuts and pre-activation nets are not written")
    if isinstance(model, ResNet) and not isinstance(model.conv1, nn.Conv2d):
        raise UserError(f"Keras export: {label} has a deep stem; not written")
    if normalization is None:
        if preprocessing != "none" and not card.normalization:
            raise UserError(f"Keras preprocessing {preprocessing}: the model records no input normalisation to "
                            "convert from; use none")
        norm = card.normalization or {"mean": (0.0,) * 3, "std": (1.0,) * 3}
        normalization = (norm["mean"], norm["std"])
    return _Writer(keras).build(model.eval(), preprocessing, softmax, normalization)


def keras_logits(net: Any, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run a Keras model on NCHW tensors (transposed to NHWC); float32 logits as torch tensors."""
    keras = require_keras()
    outs = []
    for x in inputs:
        y = net(x.permute(0, 2, 3, 1).contiguous().numpy(), training=False)
        outs.append(torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(y), dtype=np.float32)))
    return outs


def export_keras(weights: str | os.PathLike[str] | LoadedModel, *, out: str | os.PathLike[str] | None = None,
                 model_name: str | None = None, force: bool = False, check_size: int | None = None,
                 preprocessing: str = "none", softmax: bool = False) -> ExportResult:
    """Write ``weights``' model as a ``.keras`` file (default: beside the weights), checked: loaded back with
    Keras' safe loader and compared with PyTorch on random inputs (side ``check_size``, default the weights'
    input size) at batch sizes 1 and 3; ExportCheckError (nothing written) beyond ``ATOL + RTOL * max |outputs|``.
    ``preprocessing``/``softmax``: the contract it takes and returns (see the module doc and :func:`contract`);
    with a preprocessing, the check inputs are random 0..255 images, preprocessed as Keras would.
    A default-named file that exists is replaced only with ``force``."""
    from ..infer.export_result import ATOL, CHECK_BATCHES, RTOL, ExportCheckError, ExportResult
    from ..loading import load_for_inference
    from ..outputs import atomic_write, check_out_file

    keras = require_keras()
    loaded = load_for_inference(weights, model_name)
    model = loaded.model.eval()
    out_path = Path(out) if out is not None else Path(loaded.source).with_suffix(".keras")
    if out_path.suffix != ".keras":
        raise UserError(f"--out {out_path}: a Keras model file must end in .keras")
    check_out_file(out_path, replace=force or out is not None, suffix=".keras")
    if preprocessing not in KERAS_PREPROCESSING:
        raise UserError(f"unknown Keras preprocessing {preprocessing!r}; choose one of "
                        f"{', '.join(KERAS_PREPROCESSING)}")
    net = to_keras(model, preprocessing, softmax, (loaded.mean, loaded.std))
    size = check_size or loaded.input_size
    gen = torch.Generator().manual_seed(0)
    if preprocessing == "none":
        nets = [torch.randn(b, int(net.input_shape[-1]), size, size, generator=gen) for b in CHECK_BATCHES]
        inputs = nets
    else:  # 0..255 images: resnets normalises them, Keras gets them preprocessed its way
        raw = [torch.rand(b, size, size, 3, generator=gen, dtype=torch.float64) * 255 for b in CHECK_BATCHES]
        mean = torch.tensor(loaded.mean, dtype=torch.float64).view(1, 1, 1, -1)
        std = torch.tensor(loaded.std, dtype=torch.float64).view(1, 1, 1, -1)
        nets = [((r / 255 - mean) / std).permute(0, 3, 1, 2).float() for r in raw]
        inputs = [torch.from_numpy(keras_input(r.numpy(), preprocessing, loaded.mean, loaded.std)).permute(0, 3, 1, 2)
                  for r in raw]
    with torch.inference_mode():
        refs = [model(x) for x in nets]
        if softmax:
            refs = [torch.softmax(r, 1) for r in refs]
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
