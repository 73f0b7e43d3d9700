"""Keras <-> resnets: import applications and hand-built ResNets exactly, refuse what is not a ResNet, export back.

Every comparison is against Keras itself (its PyTorch backend), on the same images, with non-trivial batch-norm
statistics and conv biases, at small sizes (64x64 and odd sizes) to stay quick.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"  # read once, when keras is first imported
keras = pytest.importorskip("keras")
pytest.importorskip("h5py")
layers = keras.layers

import resnets  # noqa: E402
from resnets.cli import main  # noqa: E402
from resnets.errors import UserError  # noqa: E402
from resnets.keras import NotAResNet, export_keras, read_keras, require_keras  # noqa: E402
from resnets.keras.convert import CAFFE_MEAN_BGR  # noqa: E402
from resnets.keras.write import keras_logits  # noqa: E402

TOL = 1e-4  # max |ours - keras| / max |keras|
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' torch backend and NumPy 2


def rel_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / np.abs(theirs).max())


def randomize(model: Any, seed: int) -> None:
    """Non-trivial batch-norm statistics and affine parameters, and conv biases, everywhere."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.3, n).astype("float32"))
        elif isinstance(layer, layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.normal(0, 0.3, layer.filters).astype("float32"))


def nchw(x: np.ndarray, card: Any) -> torch.Tensor:
    """0..255 NHWC RGB images as the resnets model takes them: 0..1, normalised with the card's values, NCHW."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(card.normalization["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(card.normalization["std"]).view(1, 3, 1, 1)
    return (t - mean) / std


def keras_reference(model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keras' own ``predict`` (softmax probabilities) and its logits (pooled features times the dense kernel)."""
    probs = model.predict(x, verbose=0)
    dense = model.layers[-1]
    features = keras.Model(model.inputs, dense.input).predict(x, verbose=0)
    kernel, bias = dense.get_weights()
    return probs, features.astype(np.float64) @ kernel + bias


def resnets_outputs(net: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        logits = net(x).double()
    return torch.softmax(logits, 1).numpy(), logits.numpy()


# --- keras.applications ResNet50 and ResNet101 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def applications(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """ResNet50 and ResNet101 at 64x64 with random statistics, saved as .keras and .h5, with Keras' outputs on
    caffe-preprocessed images."""
    folder = tmp_path_factory.mktemp("apps")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(("ResNet50", "ResNet101")):
        model = getattr(keras.applications, name)(weights=None, input_shape=(64, 64, 3))
        randomize(model, i)
        paths = {}
        for suffix in (".keras", ".h5"):
            paths[suffix] = folder / f"{name}{suffix}"
            model.save(str(paths[suffix]))
        probs, logits = keras_reference(model, keras.applications.resnet.preprocess_input(images.copy()))
        out[name] = {"paths": paths, "probs": probs, "logits": logits, "images": images}
        del model
    return out


@pytest.mark.parametrize("name, suffix", [("ResNet50", ".keras"), ("ResNet101", ".keras"), ("ResNet101", ".h5")])
def test_applications_import_exactly(applications: dict[str, dict[str, Any]], name: str, suffix: str) -> None:
    """(ResNet50 .h5: through the command, below.)"""
    check_applications(resnets.load_keras(applications[name]["paths"][suffix]), applications[name], name + suffix)


def check_applications(model: torch.nn.Module, ref: dict[str, Any], name: str) -> None:
    card = model.card
    depth = name[6:].split(".")[0]
    assert (card.name, card.variant, card.num_classes, card.options) == (f"resnet{depth}", "v1", 1000, {})
    mean = [m / 255 for m in reversed(CAFFE_MEAN_BGR)]
    assert np.allclose(card.normalization["mean"], mean) and np.allclose(card.normalization["std"], 1 / 255)
    probs, logits = resnets_outputs(model, nchw(ref["images"], card))
    print(f"{name}: logits rel error {rel_error(logits, ref['logits']):.3g}, "
          f"probabilities {rel_error(probs, ref['probs']):.3g}")
    assert rel_error(logits, ref["logits"]) <= TOL
    assert rel_error(probs, ref["probs"]) <= TOL
    assert (probs.argmax(1) == ref["probs"].argmax(1)).all()


# --- hand-built tutorial ResNets: auto names, padding='same', biases, default eps -------------------------------


def conv_bn(x: Any, filters: int, kernel: int, stride: int = 1, relu: bool = True) -> Any:
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same")(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x) if relu else x


def hand_built(kind: str, counts: tuple[int, ...], size: int, *, stride_in_1x1: bool = False,
               classes: int = 7, skip_shortcut_at: int | None = None, explicit_stem: bool = False) -> Any:
    """A tutorial-style functional ResNet: 'same' everywhere (strided 7x7 stem and 3x3 pool included), or with
    ``explicit_stem`` the stem as applications pad it (ZeroPadding2D + 'valid') and 'same' in the blocks."""
    inp = keras.Input((size, size, 3))
    if explicit_stem:
        x = layers.Conv2D(64, 7, strides=2)(layers.ZeroPadding2D(3)(inp))
        x = layers.Activation("relu")(layers.BatchNormalization()(x))
        x = layers.MaxPooling2D(3, 2)(layers.ZeroPadding2D(1)(x))
    else:
        x = conv_bn(inp, 64, 7, 2)
        x = layers.MaxPooling2D(3, 2, padding="same")(x)
    index = 0
    for i, (n, width) in enumerate(zip(counts, (64, 128, 256, 512), strict=True)):
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            out = 4 * width if kind == "bottleneck" else width
            shortcut = x
            if stride != 1 or x.shape[-1] != out:
                shortcut = layers.BatchNormalization()(layers.Conv2D(out, 1, strides=stride)(x))
            if kind == "bottleneck":
                y = conv_bn(x, width, 1, stride if stride_in_1x1 else 1)
                y = conv_bn(y, width, 3, 1 if stride_in_1x1 else stride)
                y = conv_bn(y, out, 1, relu=False)
            else:
                y = conv_bn(conv_bn(x, width, 3, stride), width, 3, relu=False)
            x = y if index == skip_shortcut_at else layers.Add()([y, shortcut])
            x = layers.Activation("relu")(x)
            index += 1
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(classes, activation="softmax")(x))


HAND_BUILT = [  # kind, blocks, input side, stride on the first 1x1, applications-style stem, tf_padding, a note
    ("bottleneck", (2, 1, 1, 1), 64, False, False, True,
     "2-1-1-1 bottleneck blocks: 17 weighted layers, not ResNet-50's 3-4-6-3 (50)"),
    ("bottleneck", (1, 1, 1, 1), 65, True, False, True, "v1"),  # odd: Keras' 'same' is symmetric here
    ("basic", (1, 1, 2, 1), 64, False, True, ["blocks"],
     "1-1-2-1 basic blocks: 12 weighted layers, not ResNet-18's 2-2-2-2 (18)"),
]


@pytest.mark.parametrize("kind, counts, size, stride_in_1x1, explicit_stem, tf_padding, says", HAND_BUILT)
def test_hand_built_imports_exactly(tmp_path: Path, kind: str, counts: tuple[int, ...], size: int,
                                    stride_in_1x1: bool, explicit_stem: bool, tf_padding: Any, says: str) -> None:
    model = hand_built(kind, counts, size, stride_in_1x1=stride_in_1x1, explicit_stem=explicit_stem)
    randomize(model, size)
    path = tmp_path / "tutorial.keras"
    model.save(str(path))
    images = np.random.default_rng(size).uniform(0, 255, (2, size, size, 3)).astype("float32")
    probs_k, logits_k = keras_reference(model, images / 255.0)  # trained on 0..1 inputs
    result = read_keras(path, normalization="0-1")
    net, card = result.model, result.model.card
    assert card.options == {"tf_padding": tf_padding, "blocks": list(counts)}
    assert card.variant == ("v1" if stride_in_1x1 or kind == "basic" else "v1.5")
    assert says in " ".join(result.notes) or says == card.variant
    assert any("softmax" in n for n in result.notes) and any("conv biases folded" in n for n in result.notes)
    x = nchw(images, card)
    probs, logits = resnets_outputs(net, x)
    print(f"hand-built {kind} {counts} at {size}: logits rel error {rel_error(logits, logits_k):.3g}")
    assert rel_error(logits, logits_k) <= TOL and rel_error(probs, probs_k) <= TOL
    assert (probs.argmax(1) == probs_k.argmax(1)).all()
    # the asymmetric padding is what makes it exact, where the input size makes it asymmetric (even sides here)
    symmetric = resnets.create_model(card.name, variant=card.variant, num_classes=7, blocks=counts)
    symmetric.load_state_dict(net.state_dict())
    _, logits_sym = resnets_outputs(symmetric.eval(), x)
    if size % 2 == 0:
        assert rel_error(logits_sym, logits_k) > 1e-3
    # and the weights file rebuilds it: blocks and tf_padding travel in the card
    saved = resnets.save_weights(net, tmp_path / "w.safetensors")
    again = resnets.load_model(saved)
    assert again.card.spec == card.spec and again.normalization == card.normalization
    assert np.array_equal(resnets_outputs(again, x)[1], logits)


def test_a_graph_without_a_fixed_input_size_says_so(tmp_path: Path) -> None:
    free = hand_built("basic", (1, 1, 1, 1), None)  # type: ignore[arg-type]
    result = resnets.keras.import_keras(_save(free, tmp_path / "free.keras"), tmp_path / "free.safetensors",
                                        normalization="0-1")
    assert "the Keras graph has no fixed input size: no input size recorded; predict, serve and export feed the " \
           "family's 224x224" in result.notes
    assert "trained" not in resnets.read_metadata(tmp_path / "free.safetensors")


def _save(model: Any, path: Path) -> Path:
    model.save(str(path))
    return path


def test_cifar_style_net_imports_as_resnet20_option_b() -> None:
    inp = keras.Input((32, 32, 3))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(inp)))
    for i, width in enumerate((16, 32, 64)):
        for j in range(3):
            stride = 2 if i > 0 and j == 0 else 1
            shortcut = x if stride == 1 else layers.BatchNormalization()(layers.Conv2D(width, 1, strides=stride)(x))
            x = layers.ReLU()(layers.Add()([conv_bn(conv_bn(x, width, 3, stride), width, 3, relu=False), shortcut]))
    model = keras.Model(inp, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))
    randomize(model, 5)
    net = read_keras(model, normalization="cifar").model
    assert net.card.spec == {"name": "resnet20", "variant": "v1", "num_classes": 10, "tf_padding": True,
                             "shortcut": "B"}
    images = np.random.default_rng(5).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    x_keras = (images / 255.0 - np.array(net.normalization["mean"])) / np.array(net.normalization["std"])
    theirs = model.predict(x_keras.astype("float32"), verbose=0)
    _, ours = resnets_outputs(net, nchw(images, net.card))
    assert rel_error(ours, theirs) <= TOL


def test_not_a_resnet_names_the_first_layer_that_does_not_fit(tmp_path: Path) -> None:
    plain = hand_built("basic", (1, 1, 1, 1), 32, skip_shortcut_at=1)  # block 2 has no shortcut
    with pytest.raises(NotAResNet, match=r"^conv2d_\d+ \(Conv2D\): expected a residual block") as exc:
        read_keras(plain, normalization="0-1")
    assert "\n" not in str(exc.value)
    inp = keras.Input((32, 32, 3))
    x = conv_bn(inp, 64, 7, 2)
    x = layers.MaxPooling2D(3, 2, padding="same")(x)
    y = conv_bn(conv_bn(x, 64, 3), 64, 5, relu=False)  # a 5x5 where a basic block has a 3x3
    x = layers.Activation("relu")(layers.Add()([x, y]))
    odd = keras.Model(inp, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(NotAResNet, match=r"conv2d_\d+ \(Conv2D\): expected a basic block \(3x3, 3x3\) or a "
                                         r"bottleneck \(1x1, 3x3, 1x1\), found 3x3, 5x5"):
        read_keras(odd, normalization="0-1")
    full = hand_built("basic", (1, 1, 1, 1), 32)
    headless = keras.Model(full.inputs, full.layers[-3].output)  # no pooling, no classifier
    with pytest.raises(NotAResNet, match=r"the model ends here; expected a GlobalAveragePooling2D"):
        read_keras(headless, normalization="0-1")
    with pytest.raises(NotAResNet, match="Sequential model"):
        read_keras(keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3)]), normalization="0-1")
    with pytest.raises(UserError, match="name the input preprocessing this model was trained with"):
        read_keras(hand_built("basic", (1, 1, 1, 1), 32))


def test_v2_applications_import_exactly_as_variant_keras_v2(tmp_path: Path) -> None:
    model = keras.applications.ResNet50V2(weights=None, input_shape=(64, 64, 3))
    randomize(model, 7)
    path = tmp_path / "ResNet50V2.keras"
    model.save(str(path))
    images = np.random.default_rng(7).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    probs_k, logits_k = keras_reference(model, keras.applications.resnet_v2.preprocess_input(images.copy()))
    result = read_keras(path)
    net, card = result.model, result.model.card
    assert (card.name, card.variant, card.options) == ("resnet50", "keras-v2", {})
    assert card.normalization == {"mean": [0.5] * 3, "std": [0.5] * 3}  # Keras' "tf" mode, -1..1
    assert [b.stride for b in net.layer1] == [1, 1, 2] and [b.stride for b in net.layer4] == [1, 1, 1]
    probs, logits = resnets_outputs(net, nchw(images, card))
    print(f"ResNet50V2.keras: logits rel error {rel_error(logits, logits_k):.3g}")
    assert rel_error(logits, logits_k) <= TOL and rel_error(probs, probs_k) <= TOL
    assert (probs.argmax(1) == probs_k.argmax(1)).all()
    with pytest.raises(UserError, match=r"Keras export covers the v1 and v1.5 ResNets .*\(keras-v2\)"):
        export_keras(resnets.save_weights(net, tmp_path / "v2.safetensors"), check_size=32)


# --- keras.io's CIFAR-10 ResNets ("Trains a ResNet on the CIFAR10 dataset"), written from its description -------


def resnet_layer(x: Any, filters: int = 16, kernel: int = 3, strides: int = 1, activation: str | None = "relu",
                 batch_norm: bool = True, conv_first: bool = True) -> Any:
    """The example's building unit: a 'same' conv (he_normal, l2) with BN and activation after it, or before it."""
    conv = layers.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer="he_normal",
                         kernel_regularizer=keras.regularizers.l2(1e-4))
    steps = [conv] if conv_first else []
    steps += ([layers.BatchNormalization()] if batch_norm else []) + (
        [layers.Activation(activation)] if activation is not None else [])
    if not conv_first:
        steps.append(conv)
    for step in steps:
        x = step(x)
    return x


def keras_io_resnet_v1(depth: int, size: int = 32, classes: int = 10) -> Any:
    """Depth 6n+2: conv-BN-ReLU units; where the shape changes the shortcut is a strided 1x1 conv without BN or
    activation; add, ReLU; AveragePooling2D(8) + Flatten + a softmax Dense."""
    n, filters = (depth - 2) // 6, 16
    inp = keras.Input((size, size, 3))
    x = resnet_layer(inp)
    for stack in range(3):
        for block in range(n):
            strides = 2 if stack > 0 and block == 0 else 1
            y = resnet_layer(resnet_layer(x, filters, strides=strides), filters, activation=None)
            if strides == 2:
                x = resnet_layer(x, filters, kernel=1, strides=2, activation=None, batch_norm=False)
            x = layers.Activation("relu")(layers.add([x, y]))
        filters *= 2
    x = layers.Flatten()(layers.AveragePooling2D(pool_size=8)(x))
    return keras.Model(inp, layers.Dense(classes, activation="softmax", kernel_initializer="he_normal")(x))


def keras_io_resnet_v2(depth: int, size: int = 32, classes: int = 10) -> Any:
    """Depth 9n+2: a conv-BN-ReLU first layer, pre-activation bottlenecks (BN-ReLU-conv 1x1, 3x3, 1x1; the very
    first without BN-ReLU), a 1x1 projection without BN at each stage's first block, final BN-ReLU, pool, Dense."""
    n, f_in = (depth - 2) // 9, 16
    inp = keras.Input((size, size, 3))
    x = resnet_layer(inp, f_in)
    for stage in range(3):
        for block in range(n):
            activation, batch_norm, strides = "relu", True, 1
            f_out = f_in * (4 if stage == 0 else 2)
            if stage == 0 and block == 0:
                activation, batch_norm = None, False
            elif block == 0:
                strides = 2
            y = resnet_layer(x, f_in, 1, strides, activation, batch_norm, conv_first=False)
            y = resnet_layer(resnet_layer(y, f_in, conv_first=False), f_out, 1, conv_first=False)
            if block == 0:
                x = resnet_layer(x, f_out, 1, strides, activation=None, batch_norm=False)
            x = layers.add([x, y])
        f_in = f_out
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    x = layers.Flatten()(layers.AveragePooling2D(pool_size=8)(x))
    return keras.Model(inp, layers.Dense(classes, activation="softmax", kernel_initializer="he_normal")(x))


KERAS_IO_TOL = 1e-5


def temper(model: Any, x: np.ndarray) -> None:
    """Scale the classifier so the logits on ``x`` stay within +-4: the softmax not saturated, so comparing
    probabilities means something."""
    _, logits = keras_reference(model, x)
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    factor = 4.0 / float(np.abs(logits).max())
    dense.set_weights([kernel * factor, bias * factor])


@pytest.mark.parametrize("version, depth, spec", [
    (1, 20, {"name": "resnet20", "variant": "v1", "num_classes": 10, "tf_padding": True, "projection_bn": False,
             "shortcut": "B"}),
    (2, 29, {"name": "resnet20", "variant": "keras-cifar-v2", "num_classes": 10}),
])
def test_keras_io_cifar10_resnets_import_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str], version: int,
                                                 depth: int, spec: dict[str, Any]) -> None:
    model = (keras_io_resnet_v1 if version == 1 else keras_io_resnet_v2)(depth)
    randomize(model, depth)
    images = np.random.default_rng(depth).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    temper(model, images / 255.0)
    path = tmp_path / f"cifar10_resnet{depth}v{version}.keras"
    model.save(str(path))
    weights = tmp_path / "w.safetensors"
    assert main(["import-keras", str(path), "--normalization", "0-1", "--out", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "AveragePooling2D over the whole 8x8 map + Flatten read as the global average pool" in out
    assert "input size 32x32 recorded" in out
    net = resnets.load_model(weights)  # rebuilt from the file: the options travel in the card
    assert net.card.spec == spec
    probs_k, logits_k = keras_reference(model, images / 255.0)
    probs, logits = resnets_outputs(net, nchw(images, net.card))
    print(f"keras.io resnet_v{version} depth {depth}: logits rel error {rel_error(logits, logits_k):.3g}, "
          f"probabilities {rel_error(probs, probs_k):.3g}")
    assert rel_error(logits, logits_k) <= KERAS_IO_TOL and rel_error(probs, probs_k) <= KERAS_IO_TOL
    assert (probs.argmax(1) == probs_k.argmax(1)).all()
    # predict (its fast path folds the stem's batch norm) on a 32x32 image file: Keras' probabilities
    from PIL import Image

    pixels = images[:1].astype(np.uint8)
    Image.fromarray(pixels[0]).save(tmp_path / "one.png")
    capsys.readouterr()
    assert main(["predict", "--weights", str(weights), str(tmp_path / "one.png"), "--format", "json", "--topk", "10",
                 "--precision", "fp32", "--no-progress"]) == 0
    ours = np.zeros(10)
    for t in json.loads(capsys.readouterr().out)[0]["top"]:
        ours[t["index"]] = t["prob"]
    theirs = model.predict(pixels.astype("float32") / 255.0, verbose=0)[0]
    assert np.abs(ours - theirs).max() <= 1e-4 and ours.argmax() == theirs.argmax()
    if version == 1:  # the projections keep their biases; with a BN-less 1x1 the bias matters
        assert "2 projection shortcuts without batch norm" in out
        assert float(net.layer2[0].downsample[0].bias.detach().abs().max()) > 0.1
    else:
        assert "keras.io resnet_v2 of depth 29 (9n+2, n=3)" in out


def test_keras_io_pool_must_cover_the_whole_map() -> None:
    big = keras_io_resnet_v1(20, size=40)  # 10x10 at the end: AveragePooling2D(8) is not global there
    with pytest.raises(NotAResNet, match=r"\(AveragePooling2D\): pools 8x8 of a 10x10 map; expected the global "
                                         r"average pool"):
        read_keras(big, normalization="0-1")


def plain_cnn(end_bn: bool) -> Any:
    """No shortcut anywhere: conv-BN-ReLU and max pools, optionally BN-ReLU before the pooled head."""
    inp = keras.Input((32, 32, 3))
    x = inp
    for filters in (16, 32):
        x = layers.MaxPooling2D()(conv_bn(x, filters, 3))
    if end_bn:
        x = layers.Activation("relu")(layers.BatchNormalization()(layers.Conv2D(64, 3, padding="same")(x)))
    return keras.Model(inp, layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling2D()(x)))


def test_a_non_resnet_is_refused_at_its_first_layer_that_does_not_fit() -> None:
    for end_bn in (False, True):  # with BN-ReLU before the pool it used to be read as a ResNetV2 and blamed its stem
        with pytest.raises(NotAResNet, match=r"^max_pooling2d\w* \(MaxPooling2D\): expected a residual block: "
                                             r"activation\w*'s output feeding both") as exc:
            read_keras(plain_cnn(end_bn), normalization="0-1")
        assert "stem" not in str(exc.value) and "V2" not in str(exc.value)
    inp = keras.Input((28, 28, 1))
    mlp = keras.Model(inp, layers.Dense(10)(layers.Dense(64, activation="relu")(layers.Flatten()(inp))))
    with pytest.raises(NotAResNet, match=r"^flatten\w* \(Flatten\): expected the stem convolution \(a Conv2D\) "
                                         r"reading the image input; a ResNet starts with one$"):
        read_keras(mlp, normalization="0-1")
    flat = keras.Input((784,))
    with pytest.raises(NotAResNet, match=r"\(InputLayer\): expected an image input \(batch, height, width, "
                                         r"channels\), found \(None, 784\)"):
        read_keras(keras.Model(flat, layers.Dense(10)(flat)), normalization="0-1")
    # a branch conv without its batch norm: the layer where one was expected, and why
    for last in (False, True):
        inp = keras.Input((32, 32, 3))
        x = conv_bn(inp, 16, 3)
        y = layers.Conv2D(16, 3, padding="same", name="no_bn_here")(conv_bn(x, 16, 3) if last else x)
        y = y if last else conv_bn(y, 16, 3, relu=False)
        x = layers.Activation("relu")(layers.Add(name="the_add")([x, y]))
        odd = keras.Model(inp, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))
        where = r"no_bn_here \(Conv2D\): expected a BatchNormalization after it \(each convolution of the block's " \
            r"branch is normalised" if last else r"conv2d\w* \(Conv2D\): expected a BatchNormalization after " \
            r"no_bn_here \(each convolution of a post-activation ResNet is normalised"
        with pytest.raises(NotAResNet, match="^" + where):
            read_keras(odd, normalization="0-1")


# --- export: resnets -> Keras -------------------------------------------------------------------------------------


def random_statistics(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.3, generator=gen)
    return model.eval()


@pytest.mark.parametrize("name, variant", [("resnet18", "v1.5"), ("resnet50", "v1"), ("resnet20", "v1")])
def test_export_to_keras_gives_the_same_logits(tmp_path: Path, name: str, variant: str) -> None:
    """resnet18's strided 3x3 is v1.5's too (ZeroPadding2D + 'valid'); resnet20: option A shortcuts."""
    model = random_statistics(resnets.create_model(name, variant=variant, num_classes=10), 1)
    weights = resnets.save_weights(model, tmp_path / f"{name}.safetensors")
    result = export_keras(weights, check_size=64)
    assert result.path == str(tmp_path / f"{name}.keras") and result.format == "keras"
    assert result.max_abs_diff <= 1e-4 * result.max_abs_ref
    net = keras.saving.load_model(result.path, compile=False, safe_mode=True)
    x = torch.randn(2, 3, 65, 63, generator=torch.Generator().manual_seed(2))  # odd sizes too
    with torch.inference_mode():
        ours = model(x).numpy()
    theirs = keras_logits(net, [x])[0].numpy()
    print(f"export {name} ({variant}): logits rel error {rel_error(theirs, ours):.3g}")
    assert rel_error(theirs, ours) <= TOL
    with pytest.raises(UserError, match="exists; give --force"):
        export_keras(weights, check_size=64)
    if name == "resnet18":  # and back: the exported file imports to the same net
        again = read_keras(result.path, normalization="imagenet").model
        assert again.card.spec == {**model.card.spec, "variant": "v1"}  # basic blocks: v1 and v1.5 are one net
        with torch.inference_mode():
            assert rel_error(again(x).numpy(), ours) <= TOL


def test_export_command_writes_keras(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = resnets.save_weights(random_statistics(resnets.create_model("resnet20", shortcut="B"), 3),
                                   tmp_path / "r20.safetensors")
    out = tmp_path / "r20.keras"
    assert main(["export", "--weights", str(weights), "--format", "keras", "--out", str(out)]) == 0
    assert f"wrote {out}; Keras vs PyTorch" in capsys.readouterr().out
    line = one_line_error(capsys, ["export", "--weights", str(weights), "--format", "keras", "--out",
                                   str(tmp_path / "r20.h5")])
    assert "must end in .keras" in line


def test_export_writes_the_original_keras_contract(applications: dict[str, dict[str, Any]],
                                                    tmp_path: Path) -> None:
    """keras.applications ResNet50 in, trained or not, and back out as the pipeline built for it expects it:
    preprocess_input's caffe input, softmax out, equal to the original Keras model."""
    ref = applications["ResNet50"]
    weights = tmp_path / "r50.safetensors"
    resnets.keras.import_keras(ref["paths"][".keras"], weights)
    result = export_keras(weights, out=tmp_path / "r50.keras", preprocessing="caffe", softmax=True)
    back = keras.saving.load_model(result.path, compile=False, safe_mode=True)
    assert "preprocess" not in [layer.name for layer in back.layers]  # caffe in, caffe out: conv1's BGR order only
    probs = back.predict(keras.applications.resnet.preprocess_input(ref["images"].copy()), verbose=0)
    print(f"export ResNet50 --keras-preprocessing caffe --softmax: probabilities rel error "
          f"{rel_error(probs, ref['probs']):.3g} vs the original Keras model")
    assert rel_error(probs, ref["probs"]) <= TOL and (probs.argmax(1) == ref["probs"].argmax(1)).all()


def test_export_command_states_and_writes_the_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """keras.io's resnet_v1 trained on x / 127.5 - 1, imported, exported with --keras-preprocessing tf --softmax:
    Keras on a raw image gives what resnets predict gives on the same image file, and what the original gave."""
    from PIL import Image

    model = keras_io_resnet_v1(20)
    randomize(model, 11)
    images = np.random.default_rng(11).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    temper(model, images / 127.5 - 1)
    model.save(str(tmp_path / "cifar.keras"))
    weights = tmp_path / "cifar.safetensors"
    assert main(["import-keras", str(tmp_path / "cifar.keras"), "--normalization", "tf", "--out", str(weights)]) == 0
    out = tmp_path / "exported.keras"
    capsys.readouterr()
    assert main(["export", "--weights", str(weights), "--format", "keras", "--keras-preprocessing", "tf",
                 "--softmax", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "the Keras model takes x / 127.5 - 1 (preprocess_input mode 'tf'), RGB, channels last" in said
    assert "returns softmax probabilities over 10 classes; trained or imported at 32x32" in said
    back = keras.saving.load_model(str(out), compile=False, safe_mode=True)
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"raw{i}.png")
        Image.fromarray(image.astype(np.uint8)).save(files[-1])
    assert main(["predict", "--weights", str(weights), *map(str, files), "--format", "json", "--topk", "10",
                 "--precision", "fp32", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    ours = np.zeros((len(files), 10))
    for i, row in enumerate(rows):
        for t in row["top"]:
            ours[i, t["index"]] = t["prob"]
    theirs = back.predict(images / 127.5 - 1, verbose=0)
    original = model.predict(images / 127.5 - 1, verbose=0)
    print(f"export keras.io resnet_v1 --keras-preprocessing tf --softmax: vs predict {rel_error(theirs, ours):.3g}, "
          f"vs the original {rel_error(theirs, original):.3g}")
    assert rel_error(theirs, original) <= TOL
    assert np.abs(theirs - ours).max() <= 1e-4 and (theirs.argmax(1) == ours.argmax(1)).all()
    # the default states its contract too: the weights' normalised input, logits
    assert main(["export", "--weights", str(weights), "--format", "keras", "--out", str(tmp_path / "d.keras")]) == 0
    said = capsys.readouterr().out
    assert "takes (x / 255 - mean) / std, mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)" in said
    assert "returns logits over 10 classes (no softmax)" in said
    line = one_line_error(capsys, ["export", "--weights", str(weights), "--softmax"])
    assert "--keras-preprocessing and --softmax are for --format keras" in line


def test_export_refuses_what_it_does_not_write(tmp_path: Path) -> None:
    weights = resnets.save_weights(resnets.create_model("resnet18", variant="preact"), tmp_path / "p.safetensors")
    with pytest.raises(UserError, match=r"^Keras export covers the v1 and v1.5 ResNets .*not resnet18 \(preact\)"):
        export_keras(weights, check_size=32)
    assert not (tmp_path / "p.keras").exists()


# --- the command ------------------------------------------------------------------------------------------------


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"resnets {argv[0]}: error: "), err
    return lines[0]


def test_import_keras_command_writes_weights_predict_uses(applications: dict[str, dict[str, Any]], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from resnets.data import read_rgb
    from resnets.infer.loading import load_for_inference

    weights = tmp_path / "r50.safetensors"
    assert main(["import-keras", str(applications["ResNet50"]["paths"][".h5"]), "--out", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "resnet50 (variant v1)" in out and "caffe" in out and f"wrote {weights}" in out
    check_applications(resnets.load_model(weights), applications["ResNet50"], "ResNet50.h5")
    capsys.readouterr()
    meta = resnets.read_metadata(weights)
    assert meta["keras"]["head_softmax"] is True and meta["keras"]["normalization"] == "caffe"
    # built at 64x64, so fed at 64x64: predict, eval, serve (KServe's metadata) and export all read the record
    assert "input size 64x64 recorded" in out
    assert {k: meta["trained"][k] for k in ("input_size", "resize", "from")} == {
        "input_size": 64, "resize": 64, "from": "keras"}
    from types import SimpleNamespace

    from resnets.serve.kserve import _metadata

    assert (load_for_inference(weights).input_size, load_for_inference(weights).resize) == (64, 64)
    assert _metadata(SimpleNamespace(loaded=load_for_inference(weights)))["inputs"][0]["shape"] == [-1, 3, 64, 64]
    ref = applications["ResNet50"]
    square = tmp_path / "square.png"
    Image.fromarray(ref["images"][0].astype(np.uint8)).save(square)
    assert main(["predict", "--weights", str(weights), str(square), "--format", "json", "--topk", "1",
                 "--precision", "fp32", "--no-progress"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"][0]
    pixels = ref["images"][:1].astype(np.uint8).astype("float32")
    keras_probs = keras.saving.load_model(str(ref["paths"][".keras"]), compile=False, safe_mode=True).predict(
        keras.applications.resnet.preprocess_input(pixels.copy()), verbose=0)[0]
    print(f"predict at the recorded 64x64: top-1 {top['index']} at {top['prob']:.4f}, Keras "
          f"{int(keras_probs.argmax())} at {float(keras_probs.max()):.4f}")
    assert top["index"] == int(keras_probs.argmax()) and abs(top["prob"] - float(keras_probs.max())) < 1e-4
    exported = export_keras(weights, out=tmp_path / "r50.keras")  # checked at the recorded size
    assert exported.max_abs_diff <= 1e-4 * exported.max_abs_ref
    capsys.readouterr()
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--weights", str(weights), str(image), "--format", "json", "--topk", "1",
                 "--precision", "fp32", "--no-progress"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"][0]
    loaded = load_for_inference(weights)
    assert np.allclose(loaded.mean, [m / 255 for m in reversed(CAFFE_MEAN_BGR)])  # caffe, folded to RGB
    with torch.inference_mode():
        probs = torch.softmax(loaded.model(loaded.preprocess(read_rgb(str(image)))[None]), 1)[0]
    assert top["index"] == int(probs.argmax()) and abs(top["prob"] - float(probs.max())) < 1e-4
    # a hand-built net needs its preprocessing named
    hand = tmp_path / "hand.keras"
    hand_built("basic", (1, 1, 1, 1), 32, classes=3).save(str(hand))
    line = one_line_error(capsys, ["import-keras", str(hand), "--out", str(tmp_path / "h.safetensors")])
    assert "--normalization" in line
    assert main(["import-keras", str(hand), "--normalization", "0.5,0.5,0.5:0.25,0.25,0.25"]) == 0
    assert resnets.read_metadata(tmp_path / "hand.safetensors")["normalization"] == {
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    capsys.readouterr()
    # predict's fast path (batch norms folded into convs) keeps the Keras-style padding of a tf_padding net
    assert main(["predict", "--weights", str(tmp_path / "hand.safetensors"), str(image), "--format", "json",
                 "--topk", "3", "--precision", "fp32", "--no-progress"]) == 0
    tops = json.loads(capsys.readouterr().out)[0]["top"]
    loaded = load_for_inference(tmp_path / "hand.safetensors")
    assert loaded.model.card.options["tf_padding"] is True
    with torch.inference_mode():
        probs = torch.softmax(loaded.model(loaded.preprocess(read_rgb(str(image)))[None]), 1)[0]
    assert [t["index"] for t in tops] == probs.argsort(descending=True).tolist()
    assert np.allclose([t["prob"] for t in tops], probs.sort(descending=True).values.numpy(), atol=1e-5)


def test_import_keras_command_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path / "w.safetensors")
    assert "not found" in one_line_error(capsys, ["import-keras", str(tmp_path / "nope.keras"), "--out", out])
    text = tmp_path / "notes.h5"
    text.write_text("not a model")
    assert "not a Keras model file" in one_line_error(capsys, ["import-keras", str(text), "--out", out])
    plain = tmp_path / "plain.keras"
    hand_built("basic", (1, 1, 1, 1), 32, skip_shortcut_at=1).save(str(plain))
    line = one_line_error(capsys, ["import-keras", str(plain), "--out", out, "--normalization", "0-1"])
    assert "(Conv2D): expected a residual block" in line
    line = one_line_error(capsys, ["import-keras", str(plain), "--out", out, "--normalization", "sideways"])
    assert "unknown normalization 'sideways'" in line
    # a Lambda (Python code) is refused by Keras' safe mode, in both formats, and never runs
    marker = tmp_path / "lambda-ran"
    monkeypatch.setenv("RESNETS_TEST_MARKER", str(marker))
    inp = keras.Input((8, 8, 3))
    x = layers.Lambda(lambda t: (open(__import__("os").environ["RESNETS_TEST_MARKER"], "w").close(), t)[1])(inp)
    sneaky = keras.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    for suffix in (".keras", ".h5"):
        sneaky.save(str(tmp_path / f"sneaky{suffix}"))
        marker.unlink(missing_ok=True)
        line = one_line_error(capsys, ["import-keras", str(tmp_path / f"sneaky{suffix}"), "--out", out])
        assert "holds a Lambda layer" in line and not marker.exists()
    assert not Path(out).exists()


def test_import_resnets_does_not_import_keras() -> None:
    import subprocess

    code = ("import sys, resnets, resnets.keras, resnets.cli; resnets.cli.build_parser(); "
            "assert callable(resnets.load_keras); assert 'keras' not in sys.modules, 'keras imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_keras_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "keras")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "keras" else find_spec(name, *a))
    with pytest.raises(UserError, match=r"pip install 'resnets\[keras\]'"):
        require_keras()
