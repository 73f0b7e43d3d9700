"""Keras weights to a resnets state dict, with each fold exact (see docs/architecture.md, "Keras models").

* Conv kernels HWIO -> OIHW; the dense kernel (in, out) transposed to (out, in).
* A conv bias b before a batch norm moves into its running mean: BN(Wx + b) = BN'(Wx) with mean' = mean - b.
* Keras' batch-norm epsilon moves into the running variance: var' = var + eps_keras - 1e-5 (PyTorch's eps).
* ``caffe`` preprocessing (BGR, ImageNet means on 0..255): conv1's input channels are reversed, so the net
  takes RGB, and mean = m_bgr reversed / 255, std = 1/255 on the 0..1 scale.
All folds are computed in float64 and stored as float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.normalization import NORMALIZATION
from ..errors import UserError
from ..models.registry import CIFAR_DEPTHS, IMAGENET_DEPTHS
from .graph import NotAResNet, Op, Structure, Unit

TORCH_BN_EPS = 1e-5
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode "caffe"

#: Named input normalisations: (mean, std on 0..1 RGB, whether the Keras model took BGR).
NAMED_NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...], bool]] = {
    "imagenet": (NORMALIZATION["imagenet"]["mean"], NORMALIZATION["imagenet"]["std"], False),
    "torch": (NORMALIZATION["imagenet"]["mean"], NORMALIZATION["imagenet"]["std"], False),
    "caffe": (tuple(m / 255.0 for m in reversed(CAFFE_MEAN_BGR)), (1 / 255.0,) * 3, True),
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), False),  # Keras' "tf" mode: x / 127.5 - 1
    "0-1": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False),
    "0-255": ((0.0, 0.0, 0.0), (1 / 255.0,) * 3, False),
    "cifar": (NORMALIZATION["cifar10"]["mean"], NORMALIZATION["cifar10"]["std"], False),
    "cifar10": (NORMALIZATION["cifar10"]["mean"], NORMALIZATION["cifar10"]["std"], False),
}
NORMALIZATION_HELP = ("imagenet (alias torch), caffe (BGR, ImageNet means on 0..255: keras.applications.resnet), "
                      "tf (-1..1), 0-1 (alias none), 0-255, cifar, or MEAN:STD, e.g. 0.5,0.5,0.5:0.25,0.25,0.25 "
                      "(RGB, on the 0..1 scale)")


def parse_normalization(text: str) -> tuple[tuple[float, ...], tuple[float, ...], bool, str]:
    """``(mean, std, bgr, name)`` for a name in NAMED_NORMALIZATIONS or ``MEAN:STD`` (three values each, 0..1 RGB)."""
    key = text.strip().lower()
    if key in NAMED_NORMALIZATIONS:
        mean, std, bgr = NAMED_NORMALIZATIONS[key]
        return mean, std, bgr, key
    try:
        mean_text, std_text = key.split(":")
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        mean = std = ()
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError(f"unknown normalization {text!r}; use {NORMALIZATION_HELP}")
    return mean, std, False, "explicit"


def model_name(structure: Structure) -> tuple[str, dict[str, Any], str | None]:
    """The registry name, its ``create_model`` options, and a note when the block counts are not standard."""
    blocks, kind = structure.blocks, structure.kind
    options: dict[str, Any] = {}
    if structure.tf_padding:
        options["tf_padding"] = structure.tf_padding
    if structure.in_chans != 3:
        options["in_chans"] = structure.in_chans
    first_conv = structure.stages[0][0].units[0].conv
    if not structure.projection_bn and structure.family != "cifar":
        shortcut = next(b.shortcut for s in structure.stages for b in s if b.shortcut is not None)
        raise NotAResNet(f"{shortcut.conv}: a projection without batch norm in an ImageNet-style net (7x7 stem); "
                         "resnets builds those for CIFAR-style nets (keras.io's resnet_v1), so expected a "
                         "BatchNormalization after it")
    if structure.cifar_v2:
        n = blocks[0]
        if len(set(blocks)) != 1 or n not in CIFAR_DEPTHS.values():
            raise NotAResNet(f"{first_conv}: keras.io's resnet_v2 with {'-'.join(map(str, blocks))} blocks; "
                             "expected the same count per stage, n in "
                             f"{', '.join(map(str, sorted(CIFAR_DEPTHS.values())))} (resnets' CIFAR depths 6n+2)")
        note = (f"keras.io resnet_v2 of depth {9 * n + 2} (9n+2, n={n}): built as resnet{6 * n + 2} (its n={n} "
                "blocks per stage) with variant keras-cifar-v2")
        return f"resnet{6 * n + 2}", options, note
    if structure.family == "cifar":
        n = blocks[0]
        depth = 6 * n + 2
        if kind != "basic" or len(set(blocks)) != 1 or n not in CIFAR_DEPTHS.values():
            raise NotAResNet(f"{first_conv}: a CIFAR-style net (3x3 stem) with "
                             f"{'-'.join(map(str, blocks))} {kind} blocks; expected basic blocks, the same count per "
                             f"stage, depth 6n+2 in {', '.join(map(str, sorted(CIFAR_DEPTHS)))}")
        if not structure.projection_bn:
            options["projection_bn"] = False
        return f"resnet{depth}", {**options, "shortcut": "B"}, None
    layers = 2 + (3 if kind == "bottleneck" else 2) * sum(blocks)
    same = [d for d, (k, b) in IMAGENET_DEPTHS.items() if k == kind and list(b) == blocks]
    if same:
        return f"resnet{same[0]}", options, None
    nearest = min((d for d, (k, _) in IMAGENET_DEPTHS.items() if k == kind), key=lambda d: abs(d - layers))
    standard = IMAGENET_DEPTHS[nearest][1]
    note = (f"{'-'.join(map(str, blocks))} {kind} blocks: {layers} weighted layers, not ResNet-{nearest}'s "
            f"{'-'.join(map(str, standard))} ({nearest}); built as resnet{nearest} with blocks="
            f"{tuple(blocks)}")
    return f"resnet{nearest}", {**options, "blocks": list(blocks)}, note


def _numpy(variable: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)


def _conv(unit: Unit, bgr: bool = False) -> np.ndarray:
    kernel = _numpy(unit.conv.layer.kernel).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    return kernel[:, ::-1] if bgr else kernel


def _bn(unit: Unit) -> dict[str, np.ndarray]:
    """The unit's batch norm as PyTorch's, with the conv bias and Keras' epsilon folded in."""
    assert unit.bn is not None
    bias = _numpy(unit.conv.layer.bias) if unit.conv.config.get("use_bias", True) else None
    return _bn_op(unit.bn, unit.filters, bias)


def _bn_op(bn: Op, n: int, conv_bias: np.ndarray | None) -> dict[str, np.ndarray]:
    """A Keras batch norm as PyTorch's: a preceding conv's bias into the running mean, epsilon into the variance."""
    layer, c = bn.layer, bn.config
    gamma = _numpy(layer.gamma) if c.get("scale", True) else np.ones(n)
    beta = _numpy(layer.beta) if c.get("center", True) else np.zeros(n)
    mean = _numpy(layer.moving_mean)
    var = _numpy(layer.moving_variance)
    if conv_bias is not None:
        mean = mean - conv_bias  # BN(Wx + b) with mean m == BN(Wx) with mean m - b
    var = var + float(c.get("epsilon", 1e-3)) - TORCH_BN_EPS  # same sqrt(var + eps)
    if (var <= 0).any():
        raise UserError(f"{bn}: a running variance below {TORCH_BN_EPS} with epsilon "
                        f"{c.get('epsilon')}: cannot be folded into PyTorch's epsilon")
    return {"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var}


def state_dict(structure: Structure, *, bgr: bool) -> dict[str, torch.Tensor]:
    """The resnets state dict (torchvision's keys) holding the Keras model's weights, folded."""
    out: dict[str, np.ndarray] = {}

    def put(prefix_conv: str, prefix_bn: str, unit: Unit, swap: bool = False) -> None:
        out[f"{prefix_conv}.weight"] = _conv(unit, swap)
        if unit.bn is None:  # a projection without batch norm keeps its bias
            out[f"{prefix_conv}.bias"] = _bias(unit.conv)
            return
        for key, value in _bn(unit).items():
            out[f"{prefix_bn}.{key}"] = value

    if bgr and structure.in_chans != 3:
        raise UserError(f"BGR preprocessing (caffe) for a {structure.in_chans}-channel input; it needs 3 channels")
    if structure.v2:
        _v2_state(structure, out, bgr)
    else:
        put("conv1", "bn1", structure.stem, bgr)
    if structure.cifar_v2:
        _cifar_v2_state(structure, out)
    for i, stage in enumerate([] if structure.post_bn is not None else structure.stages):
        for j, block in enumerate(stage):
            base = f"layer{i + 1}.{j}"
            for k, unit in enumerate(block.units):
                put(f"{base}.conv{k + 1}", f"{base}.bn{k + 1}", unit)
            if block.shortcut is not None:
                put(f"{base}.downsample.0", f"{base}.downsample.1", block.shortcut)
    dense: Op = structure.dense  # (the loop above is the post-activation nets'; ResNetV2 is _v2_state)
    out["fc.weight"] = _numpy(dense.layer.kernel).T
    out["fc.bias"] = _numpy(dense.layer.bias) if dense.config.get("use_bias", True) else np.zeros(
        int(dense.config["units"]))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in out.items()}
    for key in [k for k in state if k.endswith(".running_mean")]:
        state[key[: -len("running_mean")] + "num_batches_tracked"] = torch.tensor(0)
    return state


def _bias(conv: Op) -> np.ndarray:
    return _numpy(conv.layer.bias) if conv.config.get("use_bias", True) else np.zeros(int(conv.config["filters"]))


def _v2_state(structure: Structure, out: dict[str, np.ndarray], bgr: bool) -> None:
    """ResNetV2 (variant ``keras-v2``): the stem conv and each block's last 1x1 and projection keep their biases
    (no batch norm follows them); the pre-activation and final batch norms take only the epsilon fold."""
    from .graph import V2Block

    stem = structure.stem
    out["conv1.weight"] = _conv(stem, bgr)
    out["conv1.bias"] = _bias(stem.conv)
    channels = stem.filters
    for i, stage in enumerate(structure.stages):
        for j, block in enumerate(stage):
            assert isinstance(block, V2Block)
            base = f"layer{i + 1}.{j}"
            for key, value in _bn_op(block.pre_bn, channels, None).items():
                out[f"{base}.bn1.{key}"] = value
            for k, unit in enumerate(block.units):
                out[f"{base}.conv{k + 1}.weight"] = _conv(unit)
                for key, value in _bn(unit).items():
                    out[f"{base}.bn{k + 2}.{key}"] = value
            out[f"{base}.conv3.weight"] = _numpy(block.last_conv.layer.kernel).transpose(3, 2, 0, 1)
            out[f"{base}.conv3.bias"] = _bias(block.last_conv)
            if block.projection is not None:
                out[f"{base}.downsample.0.weight"] = _numpy(block.projection.layer.kernel).transpose(3, 2, 0, 1)
                out[f"{base}.downsample.0.bias"] = _bias(block.projection)
            channels = 4 * block.width
    assert structure.post_bn is not None
    for key, value in _bn_op(structure.post_bn, channels, None).items():
        out[f"final_bn.{key}"] = value


def _cifar_v2_state(structure: Structure, out: dict[str, np.ndarray]) -> None:
    """keras.io's ``resnet_v2`` (variant ``keras-cifar-v2``) after the stem: each block's pre-activation batch norm
    (none in the first), the 1x1 and 3x3 biases folded into the batch norms after them, the last 1x1's and the
    projection's biases kept, the final batch norm."""
    from .graph import CifarV2Block

    channels = structure.stem.filters
    for i, stage in enumerate(structure.stages):
        for j, block in enumerate(stage):
            assert isinstance(block, CifarV2Block)
            base = f"layer{i + 1}.{j}"
            if block.pre_bn is not None:
                for key, value in _bn_op(block.pre_bn, channels, None).items():
                    out[f"{base}.bn1.{key}"] = value
            for k, unit in enumerate(block.units):
                out[f"{base}.conv{k + 1}.weight"] = _conv(unit)
                for key, value in _bn(unit).items():
                    out[f"{base}.bn{k + 2}.{key}"] = value
            out[f"{base}.conv3.weight"] = _numpy(block.last_conv.layer.kernel).transpose(3, 2, 0, 1)
            out[f"{base}.conv3.bias"] = _bias(block.last_conv)
            if block.projection is not None:
                out[f"{base}.downsample.0.weight"] = _numpy(block.projection.layer.kernel).transpose(3, 2, 0, 1)
                out[f"{base}.downsample.0.bias"] = _bias(block.projection)
            channels = 4 * block.width
    assert structure.post_bn is not None
    for key, value in _bn_op(structure.post_bn, channels, None).items():
        out[f"final_bn.{key}"] = value
