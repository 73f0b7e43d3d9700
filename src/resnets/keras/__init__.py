"""Keras models in and out: ``load_keras`` reads a Keras ResNet (``.keras`` or legacy ``.h5``) as a resnets
model computing the same function; ``export_keras`` writes a resnets ResNet as a ``.keras`` file, checked.

The graph is read by structure (layer types and connections), never by layer names, so
``keras.applications.ResNet50`` and a hand-built tutorial ResNet import alike; see docs/keras.md.
Keras is optional (``pip install 'resnets[keras]'``); it runs on its PyTorch backend unless
``KERAS_BACKEND`` says otherwise.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .convert import NAMED_NORMALIZATIONS, NORMALIZATION_HELP
from .graph import NotAResNet
from .read import KerasImport, import_keras, load_keras, read_keras, read_model, require_keras

if TYPE_CHECKING:
    from ..infer.export_result import ExportResult
    from ..loading import LoadedModel

__all__ = ["KerasImport", "NotAResNet", "NAMED_NORMALIZATIONS", "NORMALIZATION_HELP", "export_keras",
           "import_keras", "load_keras", "read_keras", "read_model", "require_keras"]


def export_keras(weights: str | os.PathLike[str] | LoadedModel, *, out: str | os.PathLike[str] | None = None,
                 model_name: str | None = None, force: bool = False, check_size: int | None = None,
                 preprocessing: str = "none", softmax: bool = False) -> ExportResult:
    """Write a resnets ResNet as a ``.keras`` file; checked against PyTorch before it is kept (see
    :mod:`resnets.keras.write`; ``check_size``: the check inputs' side, default the weights' input size).
    ``preprocessing`` (``none``, ``caffe``, ``tf``, ``torch``) and ``softmax``: what the Keras model takes and
    returns; by default the resnets model's normalised input and logits."""
    from .write import export_keras as _export

    return _export(weights, out=out, model_name=model_name, force=force, check_size=check_size,
                   preprocessing=preprocessing, softmax=softmax)
