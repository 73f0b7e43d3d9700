"""A Keras ResNet read as a resnets model: ``read_keras`` (``.keras``, legacy ``.h5`` or a ``keras.Model``) computing
the same function, ``import_keras`` writing it as resnets safetensors, and ``require_keras``.

The import half of :mod:`resnets.keras`: it builds on :mod:`resnets.models` and :mod:`resnets.weights` only, so
that :mod:`resnets.loading` (a keras.applications weights name) can use it; the export half
(:mod:`resnets.keras.write`) sits above the loading layer.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .convert import NORMALIZATION_HELP, parse_normalization
from .graph import NotAResNet, Structure

if TYPE_CHECKING:
    from ..models import ResNetBase


def require_keras() -> Any:
    """The ``keras`` module (PyTorch backend unless ``KERAS_BACKEND`` is set); a one-line UserError if missing."""
    if "keras" not in sys.modules:
        if importlib.util.find_spec("keras") is None:
            raise UserError("Keras models need keras and h5py: pip install 'resnets[keras]'")
        os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    return keras


@dataclass
class KerasImport:
    """A Keras model read as a resnets model: the model (card set), its structure, and what the import did."""

    model: ResNetBase
    structure: Structure
    source: str
    notes: list[str] = field(default_factory=list)  # one line each: what was folded, recorded or assumed
    metadata: dict[str, Any] = field(default_factory=dict)  # written under "keras" in the weights' metadata
    trained: dict[str, Any] = field(default_factory=dict)  # written as "trained": the input size it was fed at

    def describe(self) -> str:
        s = self.structure
        card = self.model.card
        what = (f"{'-'.join(map(str, s.blocks))} {s.kind} blocks -> {card.name} (variant {card.variant}"
                f"{', ' + ', '.join(f'{k}={v}' for k, v in card.options.items()) if card.options else ''}), "
                f"{card.num_classes} classes")
        return f"{self.source}: {'keras.applications layout' if s.applications_layout else 'ResNet'}, {what}"


def read_model(path: str | os.PathLike[str]) -> Any:
    """Load a ``.keras`` archive or legacy ``.h5`` with Keras' safe loader (no lambdas run, not compiled)."""
    keras = require_keras()
    p = Path(path)
    if not p.is_file():
        raise UserError(f"Keras model file not found: {p}")
    if zipfile.is_zipfile(p):
        if p.suffix != ".keras":
            raise UserError(f"{p} is a zip archive; a Keras model archive ends in .keras")
    else:
        with open(p, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                raise UserError(f"{p} is not a Keras model file (a .keras archive or an .h5 file)")
        if p.suffix not in (".h5", ".hdf5"):
            raise UserError(f"{p} is an HDF5 file; name it .h5 for Keras to read it as a model")
    try:
        return keras.saving.load_model(str(p), compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types; the user needs the one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "`Lambda` layer" in first:
            raise UserError(f"refusing {p}: it holds a Lambda layer (Python code), which Keras' safe mode does "
                            "not load and a ResNet does not need") from None
        first = first.split(". ")[0][:200]
        raise UserError(f"Keras could not load {p}: {first}") from None


def read_keras(source: str | os.PathLike[str] | Any, *, normalization: str | None = None) -> KerasImport:
    """Read a Keras ResNet (a file or a ``keras.Model``) into a :class:`KerasImport`.

    ``normalization``: the input preprocessing it was trained with (see ``NORMALIZATION_HELP``); None means
    ``caffe`` for a keras.applications layout (ZeroPadding2D stem, batch-norm eps 1.001e-5), and is an error
    for other models, whose preprocessing cannot be read from the graph.
    """
    from ..models import create_model
    from ..weights import load_weights
    from .convert import model_name, state_dict
    from .graph import Graph, Reader, _pair

    if normalization is not None:
        parse_normalization(normalization)  # a typo fails before the model is read
    if isinstance(source, str | os.PathLike):
        keras_model = read_model(source)
        where = str(source)
    else:
        require_keras()
        keras_model, where = source, f"Keras model {getattr(source, 'name', '')}".strip()
    if not hasattr(keras_model, "operations") and not hasattr(keras_model, "layers"):
        raise UserError(f"{where} is not a Keras model")
    if type(keras_model).__name__ == "Sequential":
        raise NotAResNet(f"{where} is a Sequential model: a chain has no shortcuts, so it is not a ResNet")
    structure = Reader(Graph(keras_model)).read()
    notes: list[str] = []
    if normalization is None:
        if structure.v2 and structure.applications_layout:
            normalization = "tf"
            notes.append("keras.applications ResNetV2 layout: its preprocessing assumed, 'tf' (-1..1); give "
                         "--normalization if it was trained otherwise")
        elif not structure.applications_layout:
            raise UserError("name the input preprocessing this model was trained with (its graph does not say): "
                            f"--normalization (normalization=) {NORMALIZATION_HELP}")
        else:
            normalization = "caffe"
            notes.append("keras.applications layout: its preprocessing assumed, 'caffe' (BGR, ImageNet means on "
                     "0..255); give --normalization if it was trained otherwise")
    mean, std, bgr, norm_name = parse_normalization(normalization)
    if bgr:
        notes.append("caffe folded exactly: conv1's input channels reversed (the net takes RGB), mean = "
                     f"{', '.join(f'{m:.6g}' for m in mean)}, std = 1/255 on the 0..1 scale")
    name, options, note = model_name(structure)
    if note:
        notes.insert(0, note)
    # basic blocks have no 1x1 to stride, so v1 and v1.5 are one net there; CIFAR nets are v1
    plain_v1 = structure.stride_in_1x1 or structure.kind == "basic" or structure.family == "cifar"
    variant = ("keras-v2" if structure.v2 else "keras-cifar-v2" if structure.cifar_v2 else "v1" if plain_v1
               else "v1.5")
    model = create_model(name, num_classes=int(structure.dense.config["units"]), variant=variant, **options)
    load_weights(model, state_dict(structure, bgr=bgr))
    model.eval()
    model.card.normalization = {"mean": list(mean), "std": list(std)}
    eps = sorted({float(bn.config.get("epsilon", 1e-3)) for bn in structure.bns()})
    biases = sum(1 for u in structure.units() if u.bn is not None and u.conv.config.get("use_bias", True))
    if biases:
        notes.append(f"{biases} conv biases folded into the following batch norms' running means")
    kept = sum(1 for s in structure.stages for b in s if b.shortcut is not None and b.shortcut.bn is None)
    if kept:
        notes.append(f"{kept} projection shortcuts without batch norm: 1x1 convolutions with their biases "
                     "(projection_bn=False)")
    if structure.whole_map_pool is not None:
        pool = structure.whole_map_pool
        k = "x".join(map(str, _pair(pool.config["pool_size"])))
        notes.append(f"{pool.name}: AveragePooling2D over the whole {k} map + Flatten read as the global average "
                     "pool (the same function at the input size below)")
    notes.append(f"batch-norm epsilon {', '.join(f'{e:g}' for e in eps)} folded into the running variances "
                 "(PyTorch's is 1e-5)")
    if structure.tf_padding:
        notes.append("strided 'same' layers pad as Keras does (the odd pixel at bottom/right): built with "
                     f"tf_padding={structure.tf_padding}")
    if structure.softmax:
        notes.append("the Keras model ends in a softmax: resnets returns the logits before it, and predict's "
                     "softmax gives the same probabilities")
    size = structure.input_size
    trained: dict[str, Any] = {}
    if size is not None and size[0] == size[1]:
        # as a training record: input side and resize (fit_images for readers older than those), from Keras
        trained = {"input_size": size[0], "resize": size[0], "fit_images": size[0], "from": "keras"}
        notes.append(f"input size {size[0]}x{size[1]} recorded: predict, eval, serve and export feed "
                     f"{size[0]}x{size[1]} images (shorter side to {size[0]}, centre crop)")
    else:
        default = 32 if structure.family == "cifar" else 224
        what = "has no fixed input size" if size is None else f"takes {size[0]}x{size[1]}, not a square"
        notes.append(f"the Keras graph {what}: no input size recorded; predict, serve and export feed the "
                     f"family's {default}x{default}")
    meta = {"source": Path(where).name, "head_softmax": structure.softmax, "normalization": norm_name,
            "bgr_folded": bgr, "applications_layout": structure.applications_layout,
            "input_size": list(size) if size is not None else None}
    return KerasImport(model, structure, where, notes, meta, trained)


def load_keras(source: str | os.PathLike[str] | Any, *, normalization: str | None = None) -> ResNetBase:
    """A Keras ResNet (``.keras``/``.h5`` file or ``keras.Model``) as a resnets model in eval mode, computing
    the same function (logits: a Keras softmax head is left to the caller); its card carries the input
    normalisation (``normalization``, see :func:`read_keras`)."""
    return read_keras(source, normalization=normalization).model


def import_keras(source: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 normalization: str | None = None, classes: list[str] | None = None,
                 force: bool = False) -> KerasImport:
    """Read a Keras ResNet and write it as resnets safetensors at ``out`` (replaced only with ``force``)."""
    from ..outputs import check_out_file
    from ..weights import save_weights

    out_path = check_out_file(out, replace=force, suffix=".safetensors")
    result = read_keras(source, normalization=normalization)
    extra: dict[str, Any] = {"keras": result.metadata}
    if result.trained:
        extra["trained"] = result.trained
    save_weights(result.model, out_path, classes=classes, extra=extra)
    return result
