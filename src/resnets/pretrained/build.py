"""A table entry to a ready model: its file fetched and checked, the architecture and options the entry names,
the weights loaded (a ``.pth``/safetensors state dict; a keras.applications file through the Keras import), and
the card given the entry's class names and normalisation."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .classes import class_names
from .table import Entry

if TYPE_CHECKING:
    from ..models import ResNetBase


def entry_classes(entry: Entry) -> list[str]:
    """The class names of ``entry``'s head, in index order (ImageNet's 1,000 ship with resnets)."""
    return class_names(entry.classes)


def build(entry: Entry, *, num_classes: int | None = None, variant: str | None = None,
          say: Callable[[str], object] | None = None, progress: bool = True, **options: Any) -> ResNetBase:
    """``entry``'s model with its trained weights, in eval mode. ``num_classes`` other than the weights': a fresh
    head (fine-tuning). ``options`` override the entry's ``create_model`` options (e.g. ``shortcut_pad``)."""
    from ..errors import UserError
    from .retrieve import fetch

    if variant is not None and variant != entry.variant:
        raise UserError(f"weights {entry.name} are of variant {entry.variant}, not {variant}; leave out the variant")
    path = fetch(entry, progress=progress, say=say)
    if entry.format == "keras-h5":
        model = _keras_model(entry, str(path))
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_classifier(num_classes)
    else:
        from ..models.registry import from_weights

        model = from_weights(entry.arch, path, num_classes=num_classes, variant=entry.variant, say=say,
                             **{**entry.options, **options})
    if num_classes is None or num_classes == len(entry_classes(entry)):
        model.card.classes = entry_classes(entry)
    if entry.format != "keras-h5":  # the Keras import sets its own (caffe folded into conv1)
        model.card.normalization = {"mean": list(entry.mean), "std": list(entry.std)}
    return model.eval()


def _keras_model(entry: Entry, path: str) -> ResNetBase:
    """keras.applications' ResNet50/101/152 with the weights file ``path``, read by the Keras import."""
    from ..keras import read_keras, require_keras

    keras = require_keras()
    depth = entry.arch.removeprefix("resnet")
    net = getattr(keras.applications, f"ResNet{depth}")(weights=path)
    return read_keras(net, normalization="caffe").model
